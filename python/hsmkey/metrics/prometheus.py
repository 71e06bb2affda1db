"""A ``prometheus_client`` collector for a :class:`~hsmkey.PoolGroup` (needs
``prometheus-client``: ``pip install hsmkey[prometheus]``).

>>> from prometheus_client import REGISTRY                           # doctest: +SKIP
>>> REGISTRY.register(GroupCollector(group))                         # doctest: +SKIP

Every scrape reads :meth:`PoolGroup.stats() <hsmkey.PoolGroup.stats>` once. Series (label
``member`` everywhere, plus ``group`` when the collector was given ``group_name``):

=================================================== ======== ==============================
series                                              type     labels / meaning
=================================================== ======== ==============================
``hsmkey_member_up``                                gauge    1 up (or excluded), 0 down
``hsmkey_member_state``                             gauge    ``state`` = up | down |
                                                             excluded: 1 for the current
``hsmkey_member_state_since_seconds``               gauge    Unix time of the last change
``hsmkey_member_in_flight``                         gauge    operations in flight
``hsmkey_member_operations_total``                  counter  operations that succeeded
``hsmkey_member_failures_total``                    counter  operations that failed
``hsmkey_member_errors_total``                      counter  ``code``: ``CKR_*`` or class
``hsmkey_member_failovers_total``                   counter  calls that left the member
``hsmkey_member_downs_total``                       counter  times it was marked down
``hsmkey_member_probes_total``                      counter  probes while down
``hsmkey_member_excluded_keys``                     gauge    keys it is not used for
``hsmkey_operation_duration_seconds``               histo.   ``operation``, ``algorithm``
``hsmkey_pool_sessions``                            gauge    ``state`` = idle | used
``hsmkey_pool_max_sessions``                        gauge    most sessions lent at once
``hsmkey_pool_pending_requests``                    gauge    operations waiting for a session
``hsmkey_pool_events_total``                        counter  ``event`` = created, reused,
                                                             waits, timeouts, relogins,
                                                             discarded, recoveries, logins
``hsmkey_group_calls_total``                        counter  calls made through the group
``hsmkey_group_failovers_total``                    counter  failovers inside calls
``hsmkey_group_unavailable_total``                  counter  calls refused (no member)
=================================================== ======== ==============================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hsmkey.metrics.prometheus needs the prometheus-client package: "
        "pip install hsmkey[prometheus]"
    ) from exc

if TYPE_CHECKING:
    from ..group import PoolGroup

__all__ = ["GroupCollector"]

POOL_EVENTS = (
    "created",
    "reused",
    "waits",
    "timeouts",
    "relogins",
    "discarded",
    "recoveries",
    "logins",
)


class GroupCollector(Collector):
    """Collects a group's member health, operation histograms and pool counters.

    :param group: the group.
    :param namespace: the series' prefix (default ``hsmkey``).
    :param group_name: a ``group`` label on every series (for processes with several groups).
    """

    def __init__(
        self, group: PoolGroup, *, namespace: str = "hsmkey", group_name: str | None = None
    ) -> None:
        self.group = group
        self.namespace = namespace
        self.group_name = group_name

    def describe(self) -> list[Metric]:
        # No description at registration: collect() would otherwise run then (and touch the
        # HSMs' pools before the application is ready).
        return []

    def collect(self) -> Iterator[Metric]:
        if self.group.closed:
            return
        stats = self.group.stats()
        ns = self.namespace
        base = ["group"] if self.group_name else []
        gval = [self.group_name] if self.group_name else []

        def family(cls: Any, name: str, doc: str, *labels: str) -> Any:
            return cls(f"{ns}_{name}", doc, labels=[*base, "member", *labels])

        up = family(GaugeMetricFamily, "member_up", "1 while the member is up, 0 while down")
        states = family(
            GaugeMetricFamily, "member_state", "1 for the member's current state", "state"
        )
        since = family(
            GaugeMetricFamily,
            "member_state_since_seconds",
            "Unix time of the member's last change of state",
        )
        in_flight = family(GaugeMetricFamily, "member_in_flight", "Operations in flight")
        ops = family(CounterMetricFamily, "member_operations", "Operations that succeeded")
        failures = family(CounterMetricFamily, "member_failures", "Operations that failed")
        errors = family(
            CounterMetricFamily, "member_errors", "Failures by CKR_* code or class", "code"
        )
        failovers = family(
            CounterMetricFamily, "member_failovers", "Calls that failed here and went on"
        )
        downs = family(CounterMetricFamily, "member_downs", "Times the member was marked down")
        probes = family(CounterMetricFamily, "member_probes", "Probes of the member while down")
        excluded = family(
            GaugeMetricFamily, "member_excluded_keys", "Keys the member is not used for"
        )
        duration = family(
            HistogramMetricFamily,
            "operation_duration_seconds",
            "Duration of operations",
            "operation",
            "algorithm",
        )
        sessions = family(GaugeMetricFamily, "pool_sessions", "Sessions by state", "state")
        max_sessions = family(GaugeMetricFamily, "pool_max_sessions", "Most sessions lent")
        pending = family(
            GaugeMetricFamily, "pool_pending_requests", "Operations waiting for a session"
        )
        events = family(CounterMetricFamily, "pool_events", "Pool counters", "event")
        for m in stats["members"]:
            lv = [*gval, m["name"]]
            pool = m["pool"]
            up.add_metric(lv, 0 if m["state"] == "down" else 1)
            for state in ("up", "down", "excluded"):
                states.add_metric([*lv, state], 1 if m["state"] == state else 0)
            since.add_metric(lv, m["since"])
            in_flight.add_metric(lv, m["in_use"])
            ops.add_metric(lv, m["operations"])
            failures.add_metric(lv, m["failures"])
            for code, n in sorted(m["errors"].items()):
                errors.add_metric([*lv, code], n)
            failovers.add_metric(lv, m["failovers"])
            downs.add_metric(lv, m["downs"])
            probes.add_metric(lv, m["probes"])
            excluded.add_metric(lv, len(m["excluded"]))
            for h in m["durations"]:
                cumulative = 0
                buckets = []
                for bound, count in zip([*h["buckets"], float("inf")], h["counts"]):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                duration.add_metric([*lv, h["operation"], h["algorithm"]], buckets, h["sum"])
            if "idle" in pool:
                sessions.add_metric([*lv, "idle"], pool["idle"])
                sessions.add_metric([*lv, "used"], pool["in_use"])
                pending.add_metric(lv, max(0, m["in_use"] - pool["in_use"]))
            if m.get("max_sessions") is not None:
                max_sessions.add_metric(lv, m["max_sessions"])
            for event in POOL_EVENTS:
                if event in pool:
                    events.add_metric([*lv, event], pool[event])
        yield from (up, states, since, in_flight, ops, failures, errors, failovers, downs, probes)
        yield from (excluded, duration, sessions, max_sessions, pending, events)
        glabels = base
        for name, key, doc in (
            ("group_calls", "calls", "Calls made through the group"),
            ("group_failovers", "failovers", "Failovers inside calls"),
            ("group_unavailable", "unavailable", "Calls refused because no member could serve"),
        ):
            c = CounterMetricFamily(f"{ns}_{name}", doc, labels=glabels)
            c.add_metric(gval, stats[key])
            yield c
