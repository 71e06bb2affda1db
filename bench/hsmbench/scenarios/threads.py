"""Threads, each signing on its own session, against the limit with as many threads."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from ..common import THREAD_ALGS, THREADS, Slicer, Values
from ..measure import threaded_count
from ..peers import _peer_slice, _same
from ..report import Figure, fmt_rate, fmt_ratio, ratio_figure, say, table

if TYPE_CHECKING:
    from ..runner import Bench


def run(bench: Bench) -> None:
    reps = bench.reps
    tf: dict[tuple[str, str, int], Figure] = {}

    def measure(alg: str) -> Values:
        slicers: dict[Any, Slicer] = {}
        fn = bench.raw_signer(alg)
        for t in THREADS:
            slicers["limit", alg, t] = bench.limit_slicer(alg, t)
            slicers["raw", alg, t] = partial(threaded_count, _same(fn), t)
            if t <= 2 and "pykcs11" in bench.peers:
                peer_slice = bench.peers["pykcs11"].slice
                slicers["pykcs11", alg, t] = partial(_peer_slice, peer_slice, alg, t)
        return bench.interleave(slicers)

    for alg in THREAD_ALGS:
        for r in range(reps):
            say(f"threads {alg}: round {r + 1}/{reps}")
            for key, v in bench.clean_round(partial(measure, alg)).items():
                if v is not None:
                    tf.setdefault(key, Figure()).add(v)
    rows = []
    for alg in THREAD_ALGS:
        for layer, label in (
            ("limit", "Rust limit"),
            ("raw", "hsmkey Key.sign"),
            ("pykcs11", "PyKCS11 (own sessions)"),
        ):
            one = tf.get((layer, alg, 1))
            for t in THREADS:
                f = tf.get((layer, alg, t))
                if f is None or one is None:
                    continue
                rows.append(
                    [
                        f"{alg} {label}",
                        str(t),
                        fmt_rate(f),
                        fmt_ratio(ratio_figure(f, one)) if t > 1 else "",
                        fmt_ratio(ratio_figure(f, tf[("limit", alg, t)]))
                        if layer != "limit"
                        else "",
                    ]
                )
        rows.append([f"{alg} python-pkcs11", "2, 4", "not run", "", ""])
    table(
        "3. Threads, each signing on its own session: signatures per second",
        ["layer", "threads", "ops/s", "vs 1 thread", "vs limit"],
        rows,
        bench.out,
    )
    bench.note_load()
    bench.out.append(
        "   python-pkcs11 runs single-threaded only: it calls C_Initialize with NULL "
        "arguments, which turns SoftHSM2's\n   locking off; two signing threads then "
        "corrupt its state (FACTS.md: crashed in 23 of 23 runs)."
    )
    bench.results["threads"] = {f"{k[0]}/{k[1]}/{k[2]}": v.values for k, v in tf.items()}
    for alg, goal in (("RS256", 1.8), ("ES256", 1.4)):
        limit_scaling = ratio_figure(tf[("limit", alg, 2)], tf[("limit", alg, 1)]).median
        bench.target_ratio(
            f"Key.sign 2 threads >= {goal}x 1 thread, {alg} (limit: {limit_scaling:.2f}x)",
            ratio_figure(tf[("raw", alg, 2)], tf[("raw", alg, 1)]),
            goal,
        )
