"""A pure-Python spinner thread beside one signing thread: what each library leaves of it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..common import BATCH, SPIN_ALG
from ..measure import spinner_run
from ..report import Figure, fmt_rate, fmt_ratio, say, table

if TYPE_CHECKING:
    from ..runner import Bench


def run(bench: Bench) -> None:
    reps, secs = bench.reps, bench.secs
    names = [
        ("control", "Rust limit in another process (no GIL)"),
        ("hsmkey", "hsmkey Key.sign"),
        ("hsmkey-many", f"hsmkey Key.sign_many ({BATCH}/call)"),
        ("python-pkcs11", "python-pkcs11 (own process)"),
        ("pykcs11", "PyKCS11 (own process)"),
    ]
    sp = {n: (Figure(), Figure(), Figure()) for n, _ in names}
    signers = {
        "hsmkey": (bench.raw_signer(SPIN_ALG), 1),
        "hsmkey-many": (bench.batch_signer(SPIN_ALG), BATCH),
    }

    def measure() -> dict[Any, float | None]:
        values: dict[Any, float | None] = {}
        for name, _ in names:
            if name in bench.peers:
                a = bench.peers[name].ask(cmd="spinner", alg=SPIN_ALG, seconds=secs)
                if a is None:
                    continue
                alone, beside, rate = a["alone"], a["beside"], a["signer"]
            elif name == "control":
                alone, _ = spinner_run(secs, None)
                bench.limit_server.start(SPIN_ALG, 1, secs)
                beside, _ = spinner_run(secs, None)
                n, elapsed = bench.limit_server.result()
                rate = n / elapsed
            else:
                fn, per = signers[name]
                alone, _ = spinner_run(secs, None)
                beside, rate = spinner_run(secs, fn, per)
            values[name, 0] = beside / alone
            values[name, 1] = rate
            values[name, 2] = alone / secs
        return values

    for r in range(reps):
        say(f"spinner: round {r + 1}/{reps}")
        for (name, i), v in bench.clean_round(measure).items():
            if v is not None:
                sp[name][i].add(v)
    rows = [
        [label, fmt_ratio(sp[n][0]), fmt_rate(sp[n][1]), fmt_rate(sp[n][2])] for n, label in names
    ]
    table(
        f"4. A pure-Python spinner thread beside one {SPIN_ALG} signing thread",
        ["signer", "spinner vs alone", "signer ops/s", "spinner alone, loops/s"],
        rows,
        bench.out,
    )
    bench.note_load()
    bench.out.append(
        "   Beside a busy thread, a signer that releases the GIL must win it back after "
        "each call (or batch): CPython\n   makes it wait up to the switch interval "
        f"({sys.getswitchinterval() * 1000:.0f} ms) before it forces a switch."
    )
    bench.results["spinner"] = {n: [f.values for f in sp[n]] for n in sp}
    bench.target_ratio(
        "a busy Python thread keeps >= 0.8x its speed beside Key.sign", sp["hsmkey"][0], 0.8
    )
