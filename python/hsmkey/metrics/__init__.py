"""Export the health and counters of a :class:`~hsmkey.PoolGroup` to monitoring systems.

- :mod:`hsmkey.metrics.otel`: OpenTelemetry metrics (``pip install hsmkey[otel]``), named
  after OpenTelemetry's ``db.client.connection.*`` semantic conventions where they fit.
- :mod:`hsmkey.metrics.prometheus`: a ``prometheus_client`` collector
  (``pip install hsmkey[prometheus]``).

Both read :meth:`PoolGroup.stats() <hsmkey.PoolGroup.stats>`; ``docs/groups.rst`` lists the
series for dashboards. Neither module is imported by ``import hsmkey``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..group import PoolGroup

__all__: list[str] = []


class StatsCache:
    """``group.stats()`` at most once per ``ttl`` seconds: one collection asks many
    instruments, each of which needs the same snapshot."""

    def __init__(self, group: PoolGroup, ttl: float = 0.2) -> None:
        self.group = group
        self.ttl = ttl
        self._at = -1e9
        self._stats: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._at > self.ttl:
            self._stats = self.group.stats()
            self._at = now
        return self._stats
