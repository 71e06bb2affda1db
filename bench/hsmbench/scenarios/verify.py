"""The cost of ``verify_signatures=True``: every signature checked in software before it is
returned, against the same keys with verification off (one thread, ``Key.sign``)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from ..common import ALGS, KEY_FOR, PAYLOAD, Slicer, Values
from ..measure import count_for, warm
from ..report import Figure, fmt_rate, fmt_ratio, ratio_figure, say, table

if TYPE_CHECKING:
    from ..runner import Bench


def run(bench: Bench) -> None:
    import hsmkey

    tok, reps = bench.tok, bench.reps
    checked = hsmkey.SessionPool(tok.module_path, tok.label, tok.pin, verify_signatures=True)
    try:
        fns: dict[tuple[str, str], Any] = {}
        for alg in ALGS:
            plain = bench.keys[alg]
            verified = checked.find_key(key_label=KEY_FOR[alg])
            fns["off", alg] = lambda k=plain, a=alg: k.sign(a, PAYLOAD)
            fns["on", alg] = lambda k=verified, a=alg: k.sign(a, PAYLOAD)
        for fn in fns.values():
            warm(fn, 5)
        fig = {key: Figure() for key in fns}

        def measure(alg: str) -> Values:
            slicers: dict[Any, Slicer] = {
                mode: partial(count_for, fns[mode, alg]) for mode in ("off", "on")
            }
            return bench.interleave(slicers)

        for r in range(reps):
            for alg in ALGS:
                say(f"verify_signatures: round {r + 1}/{reps}, {alg}")
                for mode, v in bench.clean_round(partial(measure, alg)).items():
                    if v is not None:
                        fig[mode, alg].add(v)
        rows = [
            ["verify_signatures=False", *(fmt_rate(fig["off", a]) for a in ALGS)],
            ["verify_signatures=True", *(fmt_rate(fig["on", a]) for a in ALGS)],
            [
                "True / False",
                *(fmt_ratio(ratio_figure(fig["on", a], fig["off", a])) for a in ALGS),
            ],
        ]
        table(
            "14. verify_signatures: Key.sign per second, one thread, median (min-max)",
            ["pool", *ALGS],
            rows,
            bench.out,
        )
        bench.note_load()
        bench.results["verify"] = {f"{mode} {alg}": f.values for (mode, alg), f in fig.items()}
    finally:
        checked.close()
