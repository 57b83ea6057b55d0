"""Accord's own metrics (observability/accord_metrics.py) keep nothing while metrics are
off, and each event moves its metrics by one while on."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from accord.coordinator.observability import accord_metrics as am
from accord.coordinator.observability import metrics


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.REGISTRY.collect()
        if family.name.startswith("accord_")
        for s in family.samples
    }


def every_event(namespace: str) -> None:
    am.lock_granted(namespace, am.EXCLUSIVE, time.monotonic() - 0.5)
    am.lock_timed_out(namespace)
    am.deadlock_resolved(namespace, am.CYCLE)
    am.fence_rejected(namespace)
    am.batch_committed(3)
    am.etcd_txn(time.perf_counter())
    am.replayed(namespace)
    with am.Open(am.WATCH):
        pass
    am.update_delivered(am.update_arrival())
    am.votes_open(namespace, 1)
    am.vote_decided(namespace, "approved")
    am.lease_granted(namespace)
    am.lease_expired(namespace)
    am.etcd_health(False, True)


@pytest.fixture
def switch() -> Iterator[None]:
    was = metrics.enabled()
    yield
    metrics.configure(enabled=was)


def test_off_keeps_nothing(switch: None) -> None:
    metrics.configure(enabled=False)
    before = samples()
    every_event("unit-off")
    assert samples() == before


def test_on_each_event_counts_once(switch: None) -> None:
    metrics.configure(enabled=True)
    before = samples()
    every_event("unit-on")
    after = samples()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    ns = {"namespace": "unit-on"}
    lock = {**ns, "kind": "exclusive"}
    assert grew("accord_lock_grants_total", **lock) == 1
    assert grew("accord_lock_handoffs_total", **ns) == 1
    assert grew("accord_lock_wait_seconds_count", **lock) == 1
    assert grew("accord_lock_wait_seconds_sum", **lock) >= 0.5
    assert grew("accord_lock_timeouts_total", **ns) == 1
    assert grew("accord_deadlocks_total", **ns, policy="cycle") == 1
    assert grew("accord_fence_rejections_total", **ns) == 1
    assert grew("accord_group_commit_batch_size_sum") == 3
    assert grew("accord_etcd_txn_seconds_count") == 1
    assert grew("accord_idempotent_replays_total", **ns) == 1
    assert grew("accord_streams_open", kind="watch") == 0  # opened and closed
    assert grew("accord_session_update_delivery_seconds_count") == 1
    assert grew("accord_votes_open", **ns) == 1
    assert grew("accord_votes_decided_total", **ns, outcome="approved") == 1
    assert grew("accord_leases_granted_total", **ns) == 1
    assert grew("accord_leases_expired_total", **ns) == 1
    assert after[("accord_etcd_up", ())] == 0
    assert grew("accord_etcd_leader_changes_total") == 1
    am.votes_open("unit-on", -1)
