"""Resident memory before and after N signatures."""

from __future__ import annotations

import gc
import resource
import time
from typing import TYPE_CHECKING

from ..common import KEY_FOR, PAYLOAD
from ..measure import rss_bytes, warm
from ..report import say, table

if TYPE_CHECKING:
    from ..runner import Bench


def run(bench: Bench) -> None:
    import hsmkey

    alg, pool = "ES256", bench.pool
    args = bench.sign_args[alg]
    rows = []

    def block_once() -> None:
        with pool.session() as s:
            hsmkey.HSMJWK.from_hsm(s, key_label=KEY_FOR[alg]).hsm_private_key.sign(PAYLOAD, *args)

    loops = (
        (f"Key.sign {alg}, pool-bound key", bench.raw_signer(alg), bench.opts.memory_n),
        (f"block + HSMJWK.from_hsm + .sign {alg}", block_once, bench.opts.seed_memory_n),
    )
    for label, fn, n in loops:
        say(f"memory: {n:,} x {label}")
        warm(fn, min(20_000, n))
        gc.collect()
        before = rss_bytes()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        gc.collect()
        after = rss_bytes()
        growth = (after - before) / 2**20
        rows.append(
            [
                label,
                f"{n:,}",
                f"{before / 2**20:.1f}",
                f"{after / 2**20:.1f}",
                f"{growth:+.2f}",
                f"{n / elapsed:,.0f}",
            ]
        )
        bench.results.setdefault("memory", {})[label] = [n, before, after]
        if fn is loops[0][1]:
            bench.target(
                f"RSS grows < 5 MiB over {n:,} signatures",
                f"{growth:+.2f} MiB",
                growth < 5 if n >= 1_000_000 else None,
            )
    table(
        "7. Memory: resident set size before and after N signatures (after gc.collect();"
        " RSS does not depend on the load)",
        ["loop", "N", "RSS before MiB", "after MiB", "growth MiB", "ops/s"],
        rows,
        bench.out,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bench.out.append(f"   peak RSS of the benchmark process: {peak:.1f} MiB")
