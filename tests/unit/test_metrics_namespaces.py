"""namespace_label: the first N namespaces a process labels keep their names; every later
one is `_other`, so invented namespaces cannot grow the series without bound."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accord.coordinator.observability import metrics
from accord.coordinator.observability.metrics import OTHER_NAMESPACES, namespace_label


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    metrics.configure(enabled=True, max_namespaces=3)
    yield
    metrics.configure(enabled=False)


def test_the_first_namespaces_keep_their_names_and_later_ones_are_other() -> None:
    assert [namespace_label(f"ns-{i}") for i in range(3)] == ["ns-0", "ns-1", "ns-2"]
    assert {namespace_label(f"invented-{i}") for i in range(1_000)} == {OTHER_NAMESPACES}
    # a namespace labelled before the cap keeps its name afterwards
    assert namespace_label("ns-1") == "ns-1"
    assert namespace_label("ns-3") == OTHER_NAMESPACES


def test_the_cap_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        metrics.configure(enabled=True, max_namespaces=0)


def test_every_metric_the_dashboard_names_is_defined() -> None:
    """The names the Grafana dashboard and alerts are written against (issue 15)."""
    names = {
        "grpc_server_started",
        "grpc_server_handled",
        "grpc_server_handling_seconds",
        "grpc_server_msg_received",
        "grpc_server_msg_sent",
        "accord_lock_wait_seconds",
        "accord_lock_grants",
        "accord_lock_handoffs",
        "accord_lock_timeouts",
        "accord_deadlocks",
        "accord_fence_rejections",
        "accord_group_commit_batch_size",
        "accord_etcd_txn_seconds",
        "accord_idempotent_replays",
        "accord_streams_open",
        "accord_sessions_loaded",
        "accord_session_update_delivery_seconds",
        "accord_votes_open",
        "accord_votes_decided",
        "accord_leases_granted",
        "accord_leases_expired",
        "accord_etcd_up",
        "accord_etcd_leader_changes",
        "accord_auth_refusals",
        "accord_quota_refusals",
        "accord_inflight_calls",
    }
    defined = {family.name for family in metrics.REGISTRY.collect()}
    assert names <= defined, names - defined
