"""One module per section of the report; each has ``run(bench)``."""

from __future__ import annotations

from . import group, layers, memory, pqc, remote, scale, seed, session, spinner, threads, verify

# In the order of the report.
SCENARIOS = {
    "layers": layers,
    "threads": threads,
    "spinner": spinner,
    "session": session,
    "seed": seed,
    "memory": memory,
    "scale": scale,
    "remote": remote,
    "verify": verify,
    "group": group,
    "pqc": pqc,
}
