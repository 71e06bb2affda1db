"""A network HSM, simulated: every PKCS#11 call a network client would send costs a round trip
of 0, 1 or 5 ms (the fault module over SoftHSM2, see ``netsim``). With N sessions, the limit
is N / (2 round trips) signatures per second: N threads (the Rust loop, hsmkey's ``Key.sign``
and the seed guide's short-block pattern) against 4N asyncio tasks on one event loop
(``sign_async`` on a pool-bound key, and ``async with pool.session()`` blocks), with the loop's
lag (a 1 ms ``asyncio.sleep`` ticker) while they sign, and the PKCS#11 calls per signature.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import KEY_FOR, PAYLOAD, Slice, Slicer, Values
from ..limit import LimitServer
from ..measure import threaded_count
from ..netsim import SimulatedNetwork
from ..peers import _same
from ..report import Figure, fmt_rate, fmt_ratio, ratio_figure, say, table

if TYPE_CHECKING:
    from ..runner import Bench

ALG = "ES256"
ROUND_TRIPS = (0.0, 0.001, 0.005)  # seconds
SESSIONS = (1, 8, 32, 64)
TASKS_PER_SESSION = 4
TARGET_ROUND_TRIP = 0.001  # where the asyncio target is judged
ASYNC_GOAL = 0.85
LAYERS = (
    ("limit", "Rust limit, N threads"),
    ("threads", "Key.sign, N threads"),
    ("block", "short blocks, N threads"),
    ("async", "sign_async, 4N tasks"),
    ("ablock", "async with blocks, 4N tasks"),
)

AsyncCall = Callable[[], Awaitable[object]]


class LoopRunner:
    """One event loop for the section, run a slice at a time: ``tasks`` tasks each awaiting
    ``call`` in a loop, beside a ticker that sleeps 1 ms and records how late it wakes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lags: dict[Any, list[float]] = {}

    def slice(self, key: Any, make: Callable[[], AsyncCall], tasks: int, seconds: float) -> Slice:
        done, elapsed, lags = self.loop.run_until_complete(self._run(make(), tasks, seconds))
        self.lags.setdefault(key, []).extend(lags)
        return done, elapsed

    @staticmethod
    async def _run(call: AsyncCall, tasks: int, seconds: float) -> tuple[int, float, list[float]]:
        clock = time.perf_counter
        done = 0
        lags: list[float] = []
        deadline = clock() + seconds

        async def worker() -> None:
            nonlocal done
            while clock() < deadline:
                await call()
                done += 1

        async def ticker() -> None:
            while clock() < deadline:
                t0 = clock()
                await asyncio.sleep(0.001)
                lags.append(clock() - t0 - 0.001)

        start = clock()
        await asyncio.gather(ticker(), *(worker() for _ in range(tasks)))
        return done, clock() - start, lags

    def close(self) -> None:
        self.loop.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def run(bench: Bench) -> None:
    import hsmkey

    tok, reps = bench.tok, bench.reps
    secs = max(0.15, bench.secs / 2)
    label = KEY_FOR[ALG]
    work = Path(tempfile.mkdtemp(prefix="hsmkey-bench-remote-"))
    net = SimulatedNetwork(work, tok.module_path)
    # The limit reads the same control file; its counters stay its own.
    limit = LimitServer(tok, module=net.path, env={"HSMKEY_FAULT_COUNTS": ""})
    bench.own_pids.append(limit.proc.pid)
    runner = LoopRunner()
    pools = {n: hsmkey.SessionPool(net.path, tok.label, tok.pin, max_sessions=n) for n in SESSIONS}
    try:
        keys = {n: pool.find_key(key_label=label) for n, pool in pools.items()}

        def thread_signer(n: int) -> Callable[[], object]:
            return partial(keys[n].sign, ALG, PAYLOAD)

        def block_signer(n: int) -> Callable[[], object]:
            pool = pools[n]

            def block() -> object:
                with pool.session() as s:
                    return hsmkey.HSMJWK.from_hsm(s, key_label=label).hsm_key.sign(ALG, PAYLOAD)

            return block

        def async_signer(n: int) -> AsyncCall:
            key = keys[n]
            return lambda: key.sign_async(ALG, PAYLOAD)

        def async_block_signer(n: int) -> AsyncCall:
            pool = pools[n]

            async def block() -> object:
                async with pool.session() as s:
                    k = hsmkey.HSMJWK.from_hsm(s, key_label=label).hsm_key
                    return await k.sign_async(ALG, PAYLOAD)

            return block

        def slicers(rt: float, n: int) -> dict[Any, Slicer]:
            tasks = TASKS_PER_SESSION * n
            return {
                ("limit", rt, n): lambda t: limit.slice(ALG, n, t),
                ("threads", rt, n): partial(threaded_count, _same(thread_signer(n)), n),
                ("block", rt, n): partial(threaded_count, _same(block_signer(n)), n),
                ("async", rt, n): partial(
                    runner.slice, ("async", rt, n), partial(async_signer, n), tasks
                ),
                ("ablock", rt, n): partial(
                    runner.slice, ("ablock", rt, n), partial(async_block_signer, n), tasks
                ),
            }

        # Warm: every pool opens its sessions (and every thread and task has run once).
        for n in SESSIONS:
            for s in slicers(0.0, n).values():
                s(0.05)
        runner.lags.clear()

        fig: dict[Any, Figure] = {}
        for rt in ROUND_TRIPS:
            net.set_round_trip(rt)
            for n in SESSIONS:

                def measure(rt: float = rt, n: int = n) -> Values:
                    return bench.interleave(slicers(rt, n), secs)

                for r in range(reps):
                    say(f"remote: {rt * 1000:g} ms round trip, {n} sessions, round {r + 1}/{reps}")
                    for k, v in bench.clean_round(measure).items():
                        if v is not None:
                            fig.setdefault(k, Figure()).add(v)

        # What reaches the network per warm signature, counted by the module.
        net.set_round_trip(0.0)
        calls_rows, per_sig = count_calls(net, slicers, secs)

        report(bench, fig, runner.lags, calls_rows, per_sig, secs)
    finally:
        for pool in pools.values():
            pool.close()
        runner.close()
        limit.close()
        bench.own_pids.remove(limit.proc.pid)
        shutil.rmtree(work, ignore_errors=True)


def count_calls(
    net: SimulatedNetwork, slicers: Callable[[float, int], dict[Any, Slicer]], secs: float
) -> tuple[list[list[str]], dict[str, float]]:
    """Signs for a while with each hsmkey pattern (8 sessions) and divides the calls that
    went through the module by the signatures made."""
    rows: list[list[str]] = []
    per_sig: dict[str, float] = {}
    named = dict(LAYERS)
    for (layer, _rt, _n), slicer in slicers(0.0, 8).items():
        if layer == "limit":
            continue  # another process, with counters of its own
        net.reset_counts()
        ops, _ = slicer(secs)
        calls = net.calls()
        total = sum(calls.values())
        per_sig[layer] = total / ops if ops else float("nan")
        detail = ", ".join(f"{f} {c / ops:.2f}" for f, c in sorted(calls.items()) if ops)
        rows.append([named[layer], f"{ops:,}", f"{per_sig[layer]:.3f}", detail])
    return rows, per_sig


def report(
    bench: Bench,
    fig: dict[Any, Figure],
    lags: dict[Any, list[float]],
    calls_rows: list[list[str]],
    per_sig: dict[str, float],
    secs: float,
) -> None:
    def f(layer: str, rt: float, n: int) -> Figure:
        return fig.get((layer, rt, n), Figure())

    rows = []
    for rt in ROUND_TRIPS:
        for n in SESSIONS:
            rows.append(
                [f"{rt * 1000:g} ms", str(n), *(fmt_rate(f(layer, rt, n)) for layer, _ in LAYERS)]
            )
    table(
        f"9. A network HSM (simulated round trip per PKCS#11 call), {ALG}: signatures per "
        f"second, {bench.reps} x {secs:g} s",
        ["round trip", "sessions N", *(label for _, label in LAYERS)],
        rows,
        bench.out,
    )
    bench.note_load()
    rows = []
    for rt in ROUND_TRIPS:
        for n in SESSIONS:
            threads = f("threads", rt, n)
            lag = lags.get(("async", rt, n), [])
            rows.append(
                [
                    f"{rt * 1000:g} ms",
                    str(n),
                    fmt_ratio(ratio_figure(threads, f("limit", rt, n))),
                    fmt_ratio(ratio_figure(f("block", rt, n), threads)),
                    fmt_ratio(ratio_figure(f("async", rt, n), threads)),
                    fmt_ratio(ratio_figure(f("ablock", rt, n), threads)),
                    f"{percentile(lag, 0.5) * 1000:.2f} / {percentile(lag, 0.99) * 1000:.2f}",
                ]
            )
    table(
        "10. Ratios, paired per round: median (min-max); loop lag of a 1 ms ticker while "
        "4N tasks call sign_async",
        [
            "round trip",
            "N",
            "Key.sign / limit",
            "short blocks / Key.sign",
            "sign_async / Key.sign",
            "async blocks / Key.sign",
            "lag p50 / p99 ms",
        ],
        rows,
        bench.out,
    )
    table(
        "11. PKCS#11 calls per signature, as counted by the module (8 sessions, warm pool)",
        ["pattern", "signatures", "calls per signature", "per function"],
        calls_rows,
        bench.out,
    )
    bench.results["remote"] = {
        "figures": {f"{k[0]}/{k[1]}/{k[2]}": v.values for k, v in fig.items()},
        "lag": {
            f"{k[0]}/{k[1]}/{k[2]}": [percentile(v, 0.5), percentile(v, 0.99), len(v)]
            for k, v in lags.items()
        },
        "calls_per_signature": per_sig,
    }
    rt = TARGET_ROUND_TRIP
    for n in SESSIONS:
        threads = f("threads", rt, n)
        bench.target_ratio(
            f"sign_async, {TASKS_PER_SESSION * n} tasks >= {ASYNC_GOAL}x {n} threads, "
            f"{rt * 1000:g} ms token",
            ratio_figure(f("async", rt, n), threads),
            ASYNC_GOAL,
        )
        bench.target_ratio(
            f"async with pool.session(), {TASKS_PER_SESSION * n} tasks >= {ASYNC_GOAL}x "
            f"{n} threads, {rt * 1000:g} ms token",
            ratio_figure(f("ablock", rt, n), threads),
            ASYNC_GOAL,
        )
    n = SESSIONS[-1]
    for layer in ("async", "ablock"):
        lag = lags.get((layer, rt, n), [])
        bench.target(
            f"event loop lag while {TASKS_PER_SESSION * n} tasks sign ({dict(LAYERS)[layer]}, "
            f"{rt * 1000:g} ms token): p50 / p99",
            f"{percentile(lag, 0.5) * 1000:.2f} / {percentile(lag, 0.99) * 1000:.2f} ms "
            f"({len(lag)} ticks)",
            None,
        )
    for layer, value in per_sig.items():
        bench.target(
            f"PKCS#11 calls per warm signature == 2 (C_SignInit + C_Sign), {dict(LAYERS)[layer]}",
            f"{value:.3f}",
            abs(value - 2.0) < 0.01,
        )
