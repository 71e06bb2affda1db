"""One thread at every layer (the limit, hsmkey's layers, the peers, a software key), and the
ratios between them."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from ..common import ALGS, BATCH, CLAIMS_JSON, SignFn, Slicer, Values
from ..measure import count_for, warm
from ..report import Figure, fmt_rate, fmt_ratio, ratio_figure, say, table

if TYPE_CHECKING:
    from ..runner import Bench


def run(bench: Bench) -> None:
    reps = bench.reps
    names = [
        ("limit", "Rust limit (cryptoki loop)"),
        ("raw", "hsmkey Key.sign"),
        ("many", f"hsmkey Key.sign_many ({BATCH}/call)"),
        ("crypto", "hsmkey cryptography key .sign"),
        ("jws", "hsmkey HSMJWK + jwcrypto JWS"),
        ("compact", "hsmkey HSMJWK.sign_compact"),
        ("pyjwt", "hsmkey key + PyJWT jwt.encode"),
        ("python-pkcs11", "python-pkcs11 (own process)"),
        ("pykcs11", "PyKCS11 (own process)"),
        ("soft", "jwcrypto JWS, software key"),
    ]
    fig = {(layer, alg): Figure() for layer, _ in names for alg in ALGS}
    fns: dict[tuple[str, str], tuple[SignFn, int]] = {}
    for alg in ALGS:
        fns["raw", alg] = (bench.raw_signer(alg), 1)
        fns["many", alg] = (bench.batch_signer(alg), BATCH)
        fns["crypto", alg] = (bench.crypto_signer(alg), 1)
        fns["jws", alg] = (bench.jws_signer(bench.jwks[alg], alg), 1)
        fns["compact", alg] = (partial(bench.jwks[alg].sign_compact, CLAIMS_JSON, alg), 1)
        fns["pyjwt", alg] = (bench.pyjwt_signer(alg), 1)
        fns["soft", alg] = (bench.jws_signer(bench.soft[alg], alg), 1)
    for fn, _ in fns.values():
        warm(fn, 5)

    def measure(alg: str) -> Values:
        slicers: dict[Any, Slicer] = {}
        for layer, _ in names:
            if layer == "limit":
                slicers[layer] = bench.limit_slicer(alg)
            elif layer in bench.peers:
                slicers[layer] = partial(bench.peers[layer].slice, alg)
            else:
                fn, per = fns[layer, alg]
                slicers[layer] = partial(count_for, fn, per_call=per)
        return bench.interleave(slicers)

    for r in range(reps):
        for alg in ALGS:
            say(f"layers: round {r + 1}/{reps}, {alg}")
            for layer, v in bench.clean_round(partial(measure, alg)).items():
                if v is not None:
                    fig[layer, alg].add(v)
    rows = [[label, *(fmt_rate(fig[layer, a]) for a in ALGS)] for layer, label in names]
    table(
        "1. One thread: signatures per second, median (min-max)",
        ["layer", *ALGS],
        rows,
        bench.out,
    )
    bench.note_load()

    def ratio(num: str, den: str, alg: str) -> Figure:
        return ratio_figure(fig[num, alg], fig[den, alg])

    ratio_rows = [
        [f"{label} / limit", *(fmt_ratio(ratio(layer, "limit", a)) for a in ALGS)]
        for layer, label in names[1:-1]
    ]
    for layer, label in (("raw", "Key.sign"), ("jws", "HSMJWK JWS")):
        for peer in ("python-pkcs11", "pykcs11"):
            ratio_rows.append(
                [f"hsmkey {label} / {peer}", *(fmt_ratio(ratio(layer, peer, a)) for a in ALGS)]
            )
    ratio_rows.append(
        [
            "HSMJWK JWS / jwcrypto software key",
            *(fmt_ratio(ratio("jws", "soft", a)) for a in ALGS),
        ]
    )
    ratio_rows.append(
        [
            "HSMJWK.sign_compact / jwcrypto software",
            *(fmt_ratio(ratio("compact", "soft", a)) for a in ALGS),
        ]
    )
    table("2. Ratios, paired per round: median (min-max)", ["ratio", *ALGS], ratio_rows, bench.out)
    for lib, p in bench.peers.items():
        if p.error:
            bench.out.append(f"   n/a: {lib}: {p.error}")
        for alg, err in p.failed.items():
            bench.out.append(f"   n/a: {lib} {alg}: {err}")
    bench.results["layers"] = {f"{k[0]}/{k[1]}": v.values for k, v in fig.items()}

    for alg in ALGS:
        goal = 0.9 if alg == "ES256" else 0.95
        bench.target_ratio(f"Key.sign >= {goal}x limit, {alg}", ratio("raw", "limit", alg), goal)
    bench.target_ratio(
        "cryptography key .sign >= 0.85x limit, ES256", ratio("crypto", "limit", "ES256"), 0.85
    )
    bench.target_ratio(
        "Key.sign >= 1.1x python-pkcs11, ES256", ratio("raw", "python-pkcs11", "ES256"), 1.1
    )
    for peer in ("python-pkcs11", "pykcs11"):
        if not all(fig[peer, a].ok for a in ALGS):
            bench.target(f"Key.sign ahead of {peer} on every algorithm", "not measured", None)
            continue
        behind = [
            f"{a} {ratio('raw', peer, a).median:.2f}x"
            for a in ALGS
            if ratio("raw", peer, a).median < 1.0
        ]
        bench.target(
            f"Key.sign ahead of {peer} on every algorithm",
            "behind on " + ", ".join(behind) if behind else "ahead on all five",
            not behind,
        )
    bench.target_ratio(
        f"sign_many ({BATCH}/call) >= 0.95x limit, ES256", ratio("many", "limit", "ES256"), 0.95
    )
    bench.target_ratio(
        "HSMJWK JWS >= 0.7x jwcrypto with a software key, ES256",
        ratio("jws", "soft", "ES256"),
        0.7,
    )
    bench.target_ratio(
        "HSMJWK.sign_compact JWS >= 0.7x jwcrypto with a software key, ES256",
        ratio("compact", "soft", "ES256"),
        0.7,
    )
