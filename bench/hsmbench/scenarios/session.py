"""Microseconds per ``with pool.session()`` block on a warm pool."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..measure import warm
from ..report import Figure, say, table

if TYPE_CHECKING:
    from ..runner import Bench


def run(bench: Bench) -> None:
    import hsmkey

    pool, reps = bench.pool, bench.reps
    say("session blocks")
    clock = time.perf_counter_ns
    n = max(2000, int(20000 * bench.secs))

    def empty() -> None:
        pass

    def block() -> None:
        with pool.session():
            pass

    def block_find() -> None:
        with pool.session() as s:
            s.find_key(key_label="p256")

    def block_jwk() -> None:
        with pool.session() as s:
            hsmkey.HSMJWK.from_hsm(s, key_label="p256")

    cases = [
        ("timer alone (included in every figure)", empty),
        ("with pool.session(): pass", block),
        ("  + s.find_key(key_label=...) inside", block_find),
        ("  + HSMJWK.from_hsm(s, key_label=...) inside", block_jwk),
    ]
    med = {c: Figure() for c, _ in cases}
    p99 = {c: Figure() for c, _ in cases}
    for _, fn in cases:
        warm(fn, 500)

    def measure() -> dict[Any, float | None]:
        values: dict[Any, float | None] = {}
        for c, fn in cases:
            samples = []
            for _ in range(n):
                t0 = clock()
                fn()
                samples.append(clock() - t0)
            samples.sort()
            values[c, "median"] = samples[len(samples) // 2] / 1000
            values[c, "p99"] = samples[int(len(samples) * 0.99)] / 1000
        return values

    for _ in range(reps):
        for (c, what), v in bench.clean_round(measure).items():
            if v is not None:
                (med if what == "median" else p99)[c].add(v)

    def us(f: Figure) -> str:
        return f"{f.median:.2f} ({f.lo:.2f}-{f.hi:.2f})"

    table(
        f"5. Warm pool, one thread: microseconds per call, {reps} x {n:,} calls",
        ["call", "median us", "p99 us"],
        [[c, us(med[c]), us(p99[c])] for c, _ in cases],
        bench.out,
    )
    bench.note_load()
    bench.results["session"] = {c: [med[c].values, p99[c].values] for c, _ in cases}
    m, p = med["with pool.session(): pass"], p99["with pool.session(): pass"]
    bench.target(
        "a warm `with pool.session()` block < 5 us at the median",
        f"{m.median:.2f} us (p99 {p.median:.2f} us)",
        m.median < 5.0,
    )
