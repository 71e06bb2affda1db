"""The seed guide's pattern (a block per token) against a key held warm."""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING

from ..common import CLAIMS_JSON, KEY_FOR, Values
from ..measure import count_for, warm
from ..report import Figure, fmt_rate, fmt_ratio, ratio_figure, say, table

if TYPE_CHECKING:
    from ..runner import Bench


def run(bench: Bench) -> None:
    import hsmkey
    from jwcrypto.jws import JWS

    alg, pool, reps = "ES256", bench.pool, bench.reps
    warm_jws = bench.jws_signer(bench.jwks[alg], alg)
    protected = json.dumps({"alg": alg, "kid": bench.jwks[alg]["kid"]})

    def seed_pattern() -> str:
        with pool.session() as s:
            key = hsmkey.HSMJWK.from_hsm(s, key_label=KEY_FOR[alg])
            jws = JWS(CLAIMS_JSON)
            jws.add_signature(key, alg=alg, protected=protected)
            return str(jws.serialize(compact=True))

    warm(seed_pattern)
    fw, fs = Figure(), Figure()

    def measure() -> Values:
        return bench.interleave(
            {"warm": partial(count_for, warm_jws), "block": partial(count_for, seed_pattern)}
        )

    for r in range(reps):
        say(f"seed-guide pattern: round {r + 1}/{reps}")
        v = bench.clean_round(measure)
        fw.add(v["warm"] or 0.0)
        fs.add(v["block"] or 0.0)
    rs = ratio_figure(fs, fw)
    table(
        f"6. The seed guide's pattern, {alg} JWS: one block per token vs a key held warm",
        ["pattern", "ops/s", "vs warm key"],
        [
            ["pool-bound HSMJWK held warm; JWS", fmt_rate(fw), ""],
            [
                "with pool.session() as s: HSMJWK.from_hsm(s, ...); JWS",
                fmt_rate(fs),
                fmt_ratio(rs),
            ],
        ],
        bench.out,
    )
    bench.note_load()
    bench.results["seed"] = {"warm": fw.values, "block": fs.values}
    bench.target_ratio("seed-guide block pattern >= 0.8x a warm key (DESIGN.md)", rs, 0.8)
