"""PoolGroup metrics with the real libraries: OpenTelemetry's SDK (an in-memory reader) and
prometheus_client (a registry scrape)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.cluster import Cluster, cluster_fixture, group_fixture  # noqa: F401
from hsmkey import PoolGroup


def exercise(cluster: Cluster, group: PoolGroup) -> None:
    key = group.find_key(key_label="sign-ec")
    for _ in range(12):
        key.sign("ES256", b"m")
    cluster[1].unreachable()
    for _ in range(6):
        key.sign("ES256", b"m")  # one of them fails over from hsm-b
    assert group.stats()["members"][1]["state"] == "down"


def test_opentelemetry(cluster: Cluster, group: PoolGroup) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from hsmkey.metrics.otel import instrument
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentation = instrument(group, meter_provider=provider, group_name="signers")
    exercise(cluster, group)
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "hsmkey"
            for metric in sm.metrics:
                points[metric.name] = list(metric.data.data_points)

    def value(name: str, **attrs: str) -> Any:
        for p in points[name]:
            if all(p.attributes.get(k) == v for k, v in attrs.items()):
                return p
        raise AssertionError(f"no {name} point with {attrs}: {points[name]}")

    pool = "db.client.connection.pool.name"
    assert value("hsmkey.member.up", **{pool: "hsm-a"}).value == 1
    assert value("hsmkey.member.up", **{pool: "hsm-b"}).value == 0
    state = "hsmkey.member.state"
    assert value("hsmkey.member.state", **{pool: "hsm-b", state: "down"}).value == 1
    assert value("hsmkey.member.state", **{pool: "hsm-a", state: "up"}).value == 1
    assert value("hsmkey.member.up", **{pool: "hsm-b"}).attributes["hsmkey.group"] == "signers"
    assert (
        value("hsmkey.member.errors", **{pool: "hsm-b", "error.type": "CKR_DEVICE_ERROR"}).value
        >= 1
    )
    assert value("hsmkey.member.failovers", **{pool: "hsm-b"}).value >= 1
    used = value(
        "db.client.connection.count", **{pool: "hsm-a", "db.client.connection.state": "idle"}
    )
    assert used.value >= 1
    assert value("db.client.connection.max", **{pool: "hsm-a"}).value == 4
    assert value("db.client.connection.pending_requests", **{pool: "hsm-a"}).value == 0
    assert value("db.client.connection.timeouts", **{pool: "hsm-a"}).value == 0
    assert value("hsmkey.pool.events", **{pool: "hsm-a", "hsmkey.event": "logins"}).value >= 0
    ok = value(
        "db.client.operation.duration",
        **{pool: "hsm-a", "db.operation.name": "sign", "hsmkey.algorithm": "ES256"},
    )
    assert ok.count >= 4 and ok.sum > 0 and "error.type" not in ok.attributes
    failed = value(
        "db.client.operation.duration",
        **{pool: "hsm-b", "db.operation.name": "sign", "error.type": "CKR_DEVICE_ERROR"},
    )
    assert failed.count >= 1
    total = sum(
        p.count
        for p in points["db.client.operation.duration"]
        if "error.type" not in p.attributes and p.attributes["db.operation.name"] == "sign"
    )
    assert total == 18
    instrumentation.uninstrument()
    group.find_key(key_label="sign-ec").sign("ES256", b"after")
    data = reader.get_metrics_data()
    after = sum(
        p.count
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "db.client.operation.duration"
        for p in m.data.data_points
        if "error.type" not in p.attributes and p.attributes["db.operation.name"] == "sign"
    )
    assert after == 18  # no longer recorded


def test_prometheus(cluster: Cluster, group: PoolGroup) -> None:
    pytest.importorskip("prometheus_client")
    from hsmkey.metrics.prometheus import GroupCollector
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    registry.register(GroupCollector(group))
    exercise(cluster, group)
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert get("hsmkey_member_up", member="hsm-a") == 1
    assert get("hsmkey_member_up", member="hsm-b") == 0
    assert get("hsmkey_member_state", member="hsm-b", state="down") == 1
    assert get("hsmkey_member_state", member="hsm-b", state="up") == 0
    assert get("hsmkey_member_errors_total", member="hsm-b", code="CKR_DEVICE_ERROR") >= 1
    assert get("hsmkey_member_downs_total", member="hsm-b") == 1
    assert get("hsmkey_pool_max_sessions", member="hsm-c") == 4
    assert get("hsmkey_pool_sessions", member="hsm-a", state="used") == 0
    assert get("hsmkey_pool_events_total", member="hsm-a", event="created") >= 1
    count = sum(
        get(
            "hsmkey_operation_duration_seconds_count", member=m, operation="sign", algorithm="ES256"
        )
        for m in ("hsm-a", "hsm-b", "hsm-c")
        if (
            "hsmkey_operation_duration_seconds_count",
            tuple(sorted({"member": m, "operation": "sign", "algorithm": "ES256"}.items())),
        )
        in samples
    )
    assert count == 18
    inf = get(
        "hsmkey_operation_duration_seconds_bucket",
        member="hsm-a",
        operation="sign",
        algorithm="ES256",
        le="+Inf",
    )
    assert inf == get(
        "hsmkey_operation_duration_seconds_count",
        member="hsm-a",
        operation="sign",
        algorithm="ES256",
    )
    assert get("hsmkey_group_calls_total") >= 18
    assert get("hsmkey_group_failovers_total") >= 1
    assert get("hsmkey_group_unavailable_total") == 0
    group.close()
    assert "hsmkey_member_up" not in generate_latest(registry).decode()
