"""Pre-fork model: worker processes forked from this one, each with its own pool."""

from __future__ import annotations

import contextlib
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from ..common import KEY_FOR, PAYLOAD, THREAD_ALGS, Slice, Values
from ..measure import count_for, warm
from ..report import Figure, fmt_rate, fmt_ratio, ratio_figure, say, table

if TYPE_CHECKING:
    from ..runner import Bench


def _scale_child(conn: Any, module: str, token: str, pin: str) -> None:
    """A pre-fork worker: its own pool, made after the fork."""
    import hsmkey

    try:
        pool = hsmkey.SessionPool(module, token, pin)
        keys = {alg: pool.find_key(key_label=KEY_FOR[alg]) for alg in THREAD_ALGS}
        signers = {alg: partial(key.sign, alg, PAYLOAD) for alg, key in keys.items()}
        for fn in signers.values():
            warm(fn)
        conn.send("ready")
        while True:
            msg = conn.recv()
            if msg is None:
                break
            alg, seconds, start_at = msg
            time.sleep(max(0.0, start_at - time.time()))
            conn.send(count_for(signers[alg], seconds))
    except Exception as exc:
        conn.send(f"error: {type(exc).__name__}: {exc}")
    finally:
        conn.close()


def run(bench: Bench) -> None:
    """Pre-fork model: worker processes forked from this one, each with its own pool."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    conns: list[Any] = []
    procs: list[Any] = []
    try:
        for _ in range(2):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_scale_child,
                args=(child, bench.tok.module_path, bench.tok.label, bench.tok.pin),
            )
            p.start()
            child.close()
            conns.append(parent)
            procs.append(p)
            if p.pid is not None:
                bench.own_pids.append(p.pid)
        for c in conns:
            hello = c.recv()
            if hello != "ready":
                raise RuntimeError(f"forked worker: {hello}")
        figs: dict[tuple[str, int], Figure] = {}

        def processes(alg: str, nproc: int, seconds: float) -> Slice:
            start_at = time.time() + 0.005  # all start together
            for c in conns[:nproc]:
                c.send((alg, seconds, start_at))
            answers = [c.recv() for c in conns[:nproc]]
            bad = [x for x in answers if isinstance(x, str)]
            if bad:
                raise RuntimeError(f"forked worker: {bad[0]}")
            return sum(n for n, _ in answers), max(t for _, t in answers)

        def measure(alg: str) -> Values:
            return bench.interleave(
                {
                    (alg, 0): bench.limit_slicer(alg, 2),
                    (alg, 1): partial(processes, alg, 1),
                    (alg, 2): partial(processes, alg, 2),
                }
            )

        for alg in THREAD_ALGS:
            for r in range(bench.reps):
                say(f"scale-out {alg}: round {r + 1}/{bench.reps}")
                for key, v in bench.clean_round(partial(measure, alg)).items():
                    if v is not None:
                        figs.setdefault(key, Figure()).add(v)
        rows = []
        for alg in THREAD_ALGS:
            one, two, lim = figs[(alg, 1)], figs[(alg, 2)], figs[(alg, 0)]
            rows.append(
                [
                    alg,
                    fmt_rate(one),
                    fmt_rate(two),
                    fmt_ratio(ratio_figure(two, one)),
                    fmt_rate(lim),
                    fmt_ratio(ratio_figure(two, lim)),
                ]
            )
        table(
            "8. Scale-out: forked worker processes, each with its own pool; Key.sign",
            [
                "alg",
                "1 process",
                "2 processes",
                "2 vs 1",
                "limit, 2 threads",
                "2 processes vs limit",
            ],
            rows,
            bench.out,
        )
        bench.note_load()
        bench.results["scale"] = {f"{k[0]}/{k[1]}": v.values for k, v in figs.items()}
    except Exception as exc:
        bench.out.append(f"\n8. Scale-out: failed: {type(exc).__name__}: {exc}")
    finally:
        for c in conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                c.send(None)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        bench.own_pids.clear()
