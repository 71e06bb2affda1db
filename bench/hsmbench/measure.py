"""Measuring: signatures in a time slice, from one or many threads; a busy neighbour thread;
the CPU other processes took meanwhile; resident memory."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from .common import Factory, SignFn, Slice


def count_for(fn: SignFn, seconds: float, per_call: int = 1) -> Slice:
    """Calls ``fn`` for ``seconds``: (calls x ``per_call``, seconds taken)."""
    clock = time.perf_counter
    n = 0
    start = clock()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        if clock() >= deadline:
            break
    return n * per_call, clock() - start


def threaded_count(factory: Factory, threads: int, seconds: float) -> Slice:
    """``threads`` threads, each with its own ``factory()`` signer, for ``seconds``:
    (signatures, seconds from the start signal to the last thread's end)."""
    if threads == 1:
        return count_for(factory(), seconds)
    counts = [0] * threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(i: int, fn: SignFn) -> None:
        clock = time.perf_counter
        try:
            barrier.wait()
            deadline = clock() + seconds
            n = 0
            while clock() < deadline:
                fn()
                n += 1
            counts[i] = n
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i, factory())) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts), elapsed


def _spin_chunk() -> int:
    x = 0
    for i in range(256):
        x += i
    return x


def spinner_run(seconds: float, signer: SignFn | None, per_call: int = 1) -> tuple[int, float]:
    """A pure-Python spinner thread for ``seconds``, alone or beside a signing thread.

    Returns (spinner chunks done, signer ops/s).
    """
    result = {"spin": 0, "sign": 0.0}

    def spin() -> None:
        clock = time.perf_counter
        deadline = clock() + seconds
        n = 0
        while clock() < deadline:
            _spin_chunk()
            n += 1
        result["spin"] = n

    def sign() -> None:
        assert signer is not None
        clock = time.perf_counter
        start = clock()
        deadline = start + seconds
        n = 0
        while clock() < deadline:
            signer()
            n += per_call
        result["sign"] = n / (clock() - start)

    threads = [threading.Thread(target=spin)]
    if signer is not None:
        threads.append(threading.Thread(target=sign))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return int(result["spin"]), float(result["sign"])


def warm(fn: SignFn, n: int = 20) -> None:
    for _ in range(n):
        fn()


class CpuShare:
    """How much of the machine's CPU time other processes took during a section.

    Busy time of all CPUs (/proc/stat, steal included) minus the CPU time of this process,
    its waited-for children and the live peer processes, over wall time x CPUs.
    """

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.t0, self.busy0, self.own0 = time.monotonic(), self._busy(), self._own()

    @classmethod
    def _busy(cls) -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except OSError:
            return 0.0
        user, nice, system, _idle, _iowait, irq, softirq, steal = v
        return (user + nice + system + irq + softirq + steal) / cls.TICK

    def _own(self) -> float:
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / self.TICK
            except (OSError, IndexError, ValueError):
                pass
        return total

    def foreign(self) -> float:
        wall = time.monotonic() - self.t0
        other = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, other / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
