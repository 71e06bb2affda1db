"""Several network HSMs behind one ``PoolGroup``: three simulated HSMs (the fault module in
front of its own SoftHSM2 copy, 2 ms per PKCS#11 call, 4 sessions each) against one of them
alone in a ``SessionPool``, from 24 threads and from 96 asyncio tasks; the same with one of
the three down (a member that answers every call with ``CKR_DEVICE_ERROR``); and a member
made unreachable under load and brought back, counting failed calls.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import KEY_FOR, PAYLOAD, Slicer, Values
from ..measure import threaded_count
from ..netsim import SimulatedHSM
from ..report import Figure, fmt_rate, fmt_ratio, ratio_figure, say, table
from .remote import LoopRunner

if TYPE_CHECKING:
    from ..runner import Bench

ALG = "ES256"
ROUND_TRIP = 0.002  # seconds per PKCS#11 call
SESSIONS = 4  # per member
THREADS = 24
TASKS = 96
GOAL_GROUP = 2.55  # three members against one
GOAL_ONE_DOWN = 1.7  # two of three members up against one
SETUPS = (
    ("single", "one HSM, SessionPool"),
    ("group", "group of 3"),
    ("down", "group of 3, one down"),
)


def run(bench: Bench) -> None:
    import hsmkey

    tok, reps = bench.tok, bench.reps
    secs = max(0.3, bench.secs)
    label = KEY_FOR[ALG]
    work = Path(tempfile.mkdtemp(prefix="hsmkey-bench-group-"))
    members = [
        SimulatedHSM(work, f"hsm-{c}", tok.module_path, ROUND_TRIP) for c in ("a", "b", "c", "d")
    ]
    dead = members[3]  # the member that is down in the "one down" group
    dead.set_reachable(False)
    runner = LoopRunner()
    pools: list[Any] = []

    def pool(member: SimulatedHSM) -> Any:
        p = hsmkey.SessionPool(member.path, tok.label, tok.pin, max_sessions=SESSIONS)
        pools.append(p)
        return p

    try:
        single = pool(members[0])
        group = hsmkey.PoolGroup([pool(m) for m in members[:3]], names=["a", "b", "c"])
        down = hsmkey.PoolGroup(
            [pool(members[0]), pool(members[1]), pool(dead)], names=["a", "b", "d"]
        )
        keys: dict[str, Any] = {
            "single": single.find_key(key_label=label),
            "group": group.find_key(key_label=label),
        }
        # The down group finds its key on a or b; its first calls to d fail over and mark d
        # down (probed with backoff from then on, as in production).
        keys["down"] = down.find_key(key_label=label)
        for _ in range(12):
            keys["down"].sign(ALG, PAYLOAD)
        assert down.stats()["members"][2]["state"] == "down"

        def slicers() -> dict[Any, Slicer]:
            out: dict[Any, Slicer] = {}
            for name in keys:
                key = keys[name]
                out[(name, "threads")] = partial(
                    threaded_count, lambda key=key: partial(key.sign, ALG, PAYLOAD), THREADS
                )
                out[(name, "async")] = partial(
                    runner.slice,
                    (name, "async"),
                    lambda key=key: lambda: key.sign_async(ALG, PAYLOAD),
                    TASKS,
                )
            return out

        for s in slicers().values():  # warm: every pool opens its sessions
            s(0.2)

        fig: dict[Any, Figure] = {}
        for r in range(reps):
            say(f"group: round {r + 1}/{reps}")
            values: Values = bench.clean_round(lambda: bench.interleave(slicers(), secs))
            for k, v in values.items():
                if v is not None:
                    fig.setdefault(k, Figure()).add(v)

        outage = failover_under_load(group, keys["group"], members[1], secs)
        report(bench, fig, outage, secs)
    finally:
        for p in pools:
            p.close()
        runner.close()
        shutil.rmtree(work, ignore_errors=True)


def failover_under_load(group: Any, key: Any, victim: SimulatedHSM, secs: float) -> dict[str, Any]:
    """24 threads sign through the group; a third of the way in, ``victim`` stops answering
    (its sessions are gone), and it comes back a third later. Counts every failed call."""
    total = max(3.0, 3 * secs)
    errors: list[BaseException] = []
    done: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                key.sign(ALG, PAYLOAD)
            except BaseException as exc:  # counted and reported
                errors.append(exc)
                continue
            t = time.perf_counter()
            with lock:
                done.append(t)

    before = group.stats()
    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(total / 3)
    t_off = time.perf_counter()
    victim.set_reachable(False)
    time.sleep(total / 3)
    t_on = time.perf_counter()
    victim.set_reachable(True)
    back_at = None
    deadline = time.perf_counter() + total / 3 + 10
    while time.perf_counter() < deadline:
        state = {m["name"]: m["state"] for m in group.stats()["members"]}
        if back_at is None and state.get("b") == "up":
            back_at = time.perf_counter()
        if back_at is not None and time.perf_counter() >= t_on + total / 3:
            break
        time.sleep(0.01)
    t_end = time.perf_counter()
    stop.set()
    for t in threads:
        t.join()
    after = group.stats()

    def rate(a: float, b: float) -> float:
        return sum(1 for x in done if a <= x < b) / (b - a) if b > a else float("nan")

    b_after = next(m for m in after["members"] if m["name"] == "b")
    b_before = next(m for m in before["members"] if m["name"] == "b")
    return {
        "signatures": len(done),
        "errors": len(errors),
        "error_examples": [repr(e) for e in errors[:3]],
        "failovers": after["failovers"] - before["failovers"],
        "rate_before": rate(t0 + 0.2, t_off),
        "rate_down": rate(t_off + 0.2, t_on),
        "rate_after": rate((back_at or t_on) + 0.2, t_end),
        "back_after": (back_at - t_on) if back_at is not None else None,
        "b_operations_after_return": b_after["operations"] - b_before["operations"],
    }


def report(bench: Bench, fig: dict[Any, Figure], outage: dict[str, Any], secs: float) -> None:
    def f(setup: str, mode: str) -> Figure:
        return fig.get((setup, mode), Figure())

    rows = []
    for mode, what in (("threads", f"{THREADS} threads"), ("async", f"{TASKS} asyncio tasks")):
        single = f("single", mode)
        rows.append(
            [
                what,
                fmt_rate(single),
                fmt_rate(f("group", mode)),
                fmt_ratio(ratio_figure(f("group", mode), single)),
                fmt_rate(f("down", mode)),
                fmt_ratio(ratio_figure(f("down", mode), single)),
            ]
        )
    table(
        f"12. Three network HSMs in a PoolGroup ({ROUND_TRIP * 1000:g} ms per PKCS#11 call, "
        f"{SESSIONS} sessions each), {ALG}: signatures per second, {bench.reps} x {secs:g} s",
        [
            "callers",
            "one HSM (SessionPool)",
            "group of 3",
            "group / one",
            "group, one down",
            "one down / one",
        ],
        rows,
        bench.out,
    )
    bench.note_load()
    back = outage["back_after"]
    table(
        f"13. One member unreachable under load ({THREADS} threads, group of 3): it stops "
        "answering a third of the way in and returns a third later, its sessions gone",
        [
            "signatures",
            "failed calls",
            "failovers",
            "sig/s before",
            "while down",
            "after return",
            "back in use after",
        ],
        [
            [
                f"{outage['signatures']:,}",
                str(outage["errors"]),
                str(outage["failovers"]),
                f"{outage['rate_before']:,.0f}",
                f"{outage['rate_down']:,.0f}",
                f"{outage['rate_after']:,.0f}",
                "-" if back is None else f"{back:.2f} s",
            ]
        ],
        bench.out,
    )
    bench.results["group"] = {
        "figures": {f"{k[0]}/{k[1]}": v.values for k, v in fig.items()},
        "outage": outage,
    }
    for mode, what in (("threads", f"{THREADS} threads"), ("async", f"{TASKS} tasks")):
        bench.target_ratio(
            f"group of 3 network HSMs >= {GOAL_GROUP}x one HSM's SessionPool, {what}",
            ratio_figure(f("group", mode), f("single", mode)),
            GOAL_GROUP,
        )
        bench.target_ratio(
            f"group of 3 with one down >= {GOAL_ONE_DOWN}x one HSM's SessionPool, {what}",
            ratio_figure(f("down", mode), f("single", mode)),
            GOAL_ONE_DOWN,
        )
    bench.target(
        "a member made unreachable under load costs no failed call",
        f"{outage['errors']} failed of {outage['signatures']:,}"
        + (f" ({outage['error_examples'][0]})" if outage["errors"] else ""),
        outage["errors"] == 0,
    )
