"""ML-DSA-65 on a kryoptic token with PQC (scripts/build-kryoptic): hsmkey's ``Key.sign``
against the Rust limit (bench/limit, ``CKM_ML_DSA`` hedged) on the same token, one and two
threads. kryoptic reads ``KRYOPTIC_CONF`` once, in ``C_Initialize``: the section sets it
before this process first loads the module."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..common import BENCH_DIR, PAYLOAD, Slicer, Values
from ..limit import LimitServer
from ..measure import threaded_count, warm
from ..peers import _same
from ..report import Figure, fmt_rate, fmt_ratio, ratio_figure, say, table

if TYPE_CHECKING:
    from ..runner import Bench

ALG = "ML-DSA-65"
KEY_LABEL = "mldsa65"
TOKEN = "hsmkey-bench-pqc"
PIN = "bench-pin-1234"
THREADS = (1, 2)


def _kryoptic() -> str | None:
    """The kryoptic module (built once per machine), or None (said why)."""
    script = BENCH_DIR.parent / "scripts" / "build-kryoptic"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        say(f"pqc: scripts/build-kryoptic failed: {proc.stderr[-500:]}")
        return None
    return lines[-1]


def _token(module: str, directory: Path) -> dict[str, str]:
    conf = directory / "kryoptic.toml"
    conf.write_text(
        f'[[slots]]\nslot = 0\ndbtype = "sqlite"\ndbargs = "{directory / "token.sql"}"\n'
    )
    env = {**os.environ, "KRYOPTIC_CONF": str(conf)}
    tool = ["pkcs11-tool", "--module", module]
    so = ["--so-pin", "bench-so-1234"]
    subprocess.run(
        [*tool, "--init-token", "--label", TOKEN, *so], env=env, check=True, capture_output=True
    )
    subprocess.run(
        [
            *tool,
            "--token-label",
            TOKEN,
            "--login",
            "--login-type",
            "so",
            *so,
            "--init-pin",
            "--pin",
            PIN,
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return {"KRYOPTIC_CONF": str(conf)}


def run(bench: Bench) -> None:
    import hsmkey

    module = _kryoptic()
    if module is None:
        bench.out.append("   pqc: not run (kryoptic with PQC could not be built)")
        return
    directory = Path(tempfile.mkdtemp(prefix="hsmkey-bench-pqc-"))
    limit: LimitServer | None = None
    pool: Any = None
    try:
        env = _token(module, directory)
        os.environ.update(env)
        pool = hsmkey.SessionPool(module, TOKEN, PIN)
        with pool.session(rw=True) as session:
            session.generate_key_pair(ALG, label=KEY_LABEL)
        key = pool.find_key(key_label=KEY_LABEL)
        tok = SimpleNamespace(module_path=module, label=TOKEN, pin=PIN)
        limit = LimitServer(tok, env=env)
        bench.own_pids.append(limit.proc.pid)
        fn = partial(key.sign, ALG, PAYLOAD)
        warm(fn, 20)

        def measure() -> Values:
            slicers: dict[Any, Slicer] = {}
            for t in THREADS:
                slicers["limit", t] = partial(_limit_slice, limit, t)
                slicers["hsmkey", t] = partial(threaded_count, _same(fn), t)
            return bench.interleave(slicers)

        fig: dict[Any, Figure] = {}
        for r in range(bench.reps):
            say(f"pqc {ALG}: round {r + 1}/{bench.reps}")
            for k, v in bench.clean_round(measure).items():
                if v is not None:
                    fig.setdefault(k, Figure()).add(v)
        rows = []
        for t in THREADS:
            rows.append([f"{ALG} Rust limit", str(t), fmt_rate(fig["limit", t]), ""])
            rows.append(
                [
                    f"{ALG} hsmkey Key.sign",
                    str(t),
                    fmt_rate(fig["hsmkey", t]),
                    fmt_ratio(ratio_figure(fig["hsmkey", t], fig["limit", t])),
                ]
            )
        table(
            f"10. Post-quantum: {ALG} (hedged, CKM_ML_DSA) on kryoptic 1.5.4, signatures per "
            "second",
            ["layer", "threads", "ops/s", "vs limit"],
            rows,
            bench.out,
        )
        bench.note_load()
        bench.results["pqc"] = {f"{k[0]}/{k[1]}": v.values for k, v in fig.items()}
        for t, goal in ((1, 0.9), (2, 0.85)):
            bench.target_ratio(
                f"{ALG} Key.sign >= {goal}x the limit, {t} thread{'s' if t > 1 else ''}",
                ratio_figure(fig["hsmkey", t], fig["limit", t]),
                goal,
            )
    finally:
        if limit is not None:
            limit.close()
            if limit.proc.pid in bench.own_pids:
                bench.own_pids.remove(limit.proc.pid)
        if pool is not None:
            pool.close()
        shutil.rmtree(directory, ignore_errors=True)


def _limit_slice(limit: LimitServer, threads: int, seconds: float) -> Any:
    limit.start(ALG, threads, seconds)
    return limit.result()
