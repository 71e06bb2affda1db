"""OpenTelemetry metrics for a :class:`~hsmkey.PoolGroup` (needs ``opentelemetry-api``:
``pip install hsmkey[otel]``; the SDK and an exporter are the application's choice).

>>> from hsmkey.metrics.otel import instrument                      # doctest: +SKIP
>>> instrumentation = instrument(group)          # the global MeterProvider by default

Instruments (attribute ``db.client.connection.pool.name`` is the member's name everywhere):

========================================= ============== =====================================
name                                      kind           attributes / meaning
========================================= ============== =====================================
``db.client.connection.count``            updown (obs.)  ``db.client.connection.state``
                                                         = ``idle`` | ``used``: sessions
``db.client.connection.max``              updown (obs.)  most sessions the pool lends
``db.client.connection.pending_requests`` updown (obs.)  operations waiting for a session
``db.client.connection.timeouts``         counter (obs.) waits that hit ``acquire_timeout``
``db.client.operation.duration``          histogram (s)  ``db.operation.name`` (sign, decrypt,
                                                         ecdh, sign_many, ...),
                                                         ``hsmkey.algorithm``, ``error.type``
                                                         (``CKR_*``) on failures
``hsmkey.member.up``                      gauge (obs.)   1 up (or excluded), 0 down
``hsmkey.member.state``                   gauge (obs.)   ``hsmkey.member.state`` = up |
                                                         down | excluded: 1 for the current
``hsmkey.member.operations``              counter (obs.) operations that succeeded
``hsmkey.member.errors``                  counter (obs.) ``error.type``: ``CKR_*`` code or
                                                         exception class
``hsmkey.member.failovers``               counter (obs.) calls that left this member
``hsmkey.member.excluded_keys``           updown (obs.)  keys this member is not used for
``hsmkey.pool.events``                    counter (obs.) ``hsmkey.event`` = created, reused,
                                                         waits, relogins, discarded,
                                                         recoveries, logins
``hsmkey.group.unavailable``              counter (obs.) calls refused: no member could serve
========================================= ============== =====================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import StatsCache

try:
    from opentelemetry import metrics as _otel_metrics
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hsmkey.metrics.otel needs the opentelemetry-api package: pip install hsmkey[otel]"
    ) from exc

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter, MeterProvider

    from ..group import PoolGroup

__all__ = ["GroupInstrumentation", "instrument"]

POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
POOL_EVENTS = ("created", "reused", "waits", "relogins", "discarded", "recoveries", "logins")


class GroupInstrumentation:
    """The instruments of one group; :meth:`uninstrument` stops the duration histogram
    (observable instruments stop reporting once the group is closed)."""

    def __init__(self, group: PoolGroup, meter: Meter, group_name: str | None) -> None:
        self.group = group
        self._stats = StatsCache(group)
        extra = {"hsmkey.group": group_name} if group_name else {}
        self._extra = extra
        self._duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of HSM operations, by member and algorithm",
        )
        histogram = self._duration

        def observe(member: str, op: str, alg: str, seconds: float, error: str | None) -> None:
            attrs: dict[str, str] = {POOL: member, "db.operation.name": op, "hsmkey.algorithm": alg}
            if error is not None:
                attrs["error.type"] = error
            if extra:
                attrs.update(extra)
            histogram.record(seconds, attrs)

        self._observer = observe
        group.add_observer(observe)
        gauge = meter.create_observable_gauge
        updown = meter.create_observable_up_down_counter
        counter = meter.create_observable_counter
        self.instruments = [
            updown(
                "db.client.connection.count",
                callbacks=[self._connections],
                unit="{connection}",
                description="Sessions of each member's pool, by state (idle, used)",
            ),
            updown(
                "db.client.connection.max",
                callbacks=[self._per_member(lambda m: m.get("max_sessions"))],
                unit="{connection}",
                description="Most sessions a member's pool lends at once",
            ),
            updown(
                "db.client.connection.pending_requests",
                callbacks=[self._per_member(_pending)],
                unit="{request}",
                description="Operations waiting for a session of a member",
            ),
            counter(
                "db.client.connection.timeouts",
                callbacks=[self._per_member(lambda m: m["pool"].get("timeouts"))],
                unit="{timeout}",
                description="Waits for a session that hit acquire_timeout",
            ),
            gauge(
                "hsmkey.member.up",
                callbacks=[self._per_member(lambda m: 0 if m["state"] == "down" else 1)],
                unit="1",
                description="1 while a member is up, 0 while it is down",
            ),
            gauge(
                "hsmkey.member.state",
                callbacks=[self._states],
                unit="1",
                description="1 for a member's current state (up, down, excluded)",
            ),
            counter(
                "hsmkey.member.operations",
                callbacks=[self._per_member(lambda m: m["operations"])],
                unit="{operation}",
                description="Operations that succeeded on a member",
            ),
            counter(
                "hsmkey.member.errors",
                callbacks=[self._errors],
                unit="{error}",
                description="Failed operations by member and error.type (CKR_* code)",
            ),
            counter(
                "hsmkey.member.failovers",
                callbacks=[self._per_member(lambda m: m["failovers"])],
                unit="{call}",
                description="Calls that failed on a member and went on to another",
            ),
            updown(
                "hsmkey.member.excluded_keys",
                callbacks=[self._per_member(lambda m: len(m["excluded"]))],
                unit="{key}",
                description="Keys a member is not used for (missing or another key)",
            ),
            counter(
                "hsmkey.pool.events",
                callbacks=[self._pool_events],
                unit="{event}",
                description="Pool counters by hsmkey.event",
            ),
            counter(
                "hsmkey.group.unavailable",
                callbacks=[self._unavailable],
                unit="{call}",
                description="Calls refused because no member could serve them",
            ),
        ]

    def uninstrument(self) -> None:
        """Stop recording operation durations."""
        self.group.remove_observer(self._observer)

    # -- callbacks --

    def _members(self) -> list[dict[str, Any]]:
        if self.group.closed:
            return []
        members: list[dict[str, Any]] = self._stats.get()["members"]
        return members

    def _attrs(self, member: dict[str, Any], **more: str) -> dict[str, str]:
        return {POOL: member["name"], **more, **self._extra}

    def _per_member(
        self, value: Callable[[dict[str, Any]], Any]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for m in self._members():
                v = value(m)
                if v is not None:
                    out.append(Observation(v, self._attrs(m)))
            return out

        return callback

    def _connections(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for m in self._members():
            pool = m["pool"]
            out.append(Observation(pool.get("idle", 0), self._attrs(m, **{STATE: "idle"})))
            out.append(Observation(pool.get("in_use", 0), self._attrs(m, **{STATE: "used"})))
        return out

    def _states(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                1 if m["state"] == state else 0, self._attrs(m, **{"hsmkey.member.state": state})
            )
            for m in self._members()
            for state in ("up", "down", "excluded")
        ]

    def _errors(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, self._attrs(m, **{"error.type": code}))
            for m in self._members()
            for code, n in m["errors"].items()
        ]

    def _pool_events(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(m["pool"][event], self._attrs(m, **{"hsmkey.event": event}))
            for m in self._members()
            for event in POOL_EVENTS
            if event in m["pool"]
        ]

    def _unavailable(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.group.closed:
            return []
        return [Observation(self._stats.get()["unavailable"], dict(self._extra))]


def _pending(member: dict[str, Any]) -> int:
    pool = member["pool"]
    return max(0, int(member["in_use"]) - int(pool.get("in_use", 0)))


def instrument(
    group: PoolGroup,
    *,
    meter_provider: MeterProvider | None = None,
    group_name: str | None = None,
) -> GroupInstrumentation:
    """Report ``group``'s metrics through OpenTelemetry.

    :param meter_provider: the provider to take the meter ``hsmkey`` from (default: the
        global one, ``opentelemetry.metrics.get_meter_provider()``).
    :param group_name: an ``hsmkey.group`` attribute on every series (for processes with
        several groups).
    """
    from .. import __version__

    provider = meter_provider or _otel_metrics.get_meter_provider()
    meter = provider.get_meter("hsmkey", __version__)
    return GroupInstrumentation(group, meter, group_name)
