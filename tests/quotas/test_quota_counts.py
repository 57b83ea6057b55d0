"""A namespace over each count quota is refused with RESOURCE_EXHAUSTED, a QuotaFailure
naming the quota and a RetryInfo; nothing is written, another namespace is unaffected,
and freeing some lets writes in again. Usage is counted by every replica from etcd's
events, including deletions by lease expiry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pycrdt import Doc, Text

from accord.client import AsyncClient, Delete, InvalidArgumentError, Put, QuotaExceededError, ops
from tests.harness import Coordinator, EtcdMember, make_client, until
from tests.quotas.helpers import (
    assert_pushback,
    namespace_keys,
    quota_admin,
    set_quota,
    usage_reaches,
)


@pytest.fixture
async def on_one(replicas: list[Coordinator], namespace: str) -> AsyncIterator[AsyncClient]:
    """A client of replica 0 only (its counts are the ones waited for)."""
    async with make_client([replicas[0].address], namespace) as client:
        yield client


async def test_keys_quota_refuses_and_writes_nothing(
    replicas: list[Coordinator], namespace: str, on_one: AsyncClient, etcd: EtcdMember
) -> None:
    await set_quota(replicas, namespace, keys=3)
    for i in range(3):
        await on_one.kv.put(f"k{i}", b"v")
    await usage_reaches(on_one, "keys", 3)
    before = namespace_keys(etcd, namespace)
    with pytest.raises(QuotaExceededError) as refused:
        await on_one.kv.put("k3", b"v")
    assert_pushback(refused.value, "keys", f"namespace:{namespace}")
    with pytest.raises(QuotaExceededError):
        await on_one.kv.txn({}, [Put("t1", b"v"), Delete("k0")])
    assert namespace_keys(etcd, namespace) == before
    # The other replica refuses too: the count is etcd's, not one replica's.
    async with make_client([replicas[1].address], namespace) as other_replica:
        await usage_reaches(other_replica, "keys", 3)
        with pytest.raises(QuotaExceededError):
            await other_replica.kv.put("k3", b"v")
    # Another namespace is unaffected.
    async with make_client([replicas[0].address], f"{namespace}-b") as neighbour:
        await neighbour.kv.put("k3", b"v")
    # Deletes always go through (a Txn of deletes too), and free room for a write.
    await on_one.kv.txn({}, [Delete("k0")])
    await usage_reaches(on_one, "keys", 2)
    await on_one.kv.put("k3", b"v")


async def test_bytes_quota_counts_the_request(
    replicas: list[Coordinator], namespace: str, on_one: AsyncClient, etcd: EtcdMember
) -> None:
    await set_quota(replicas, namespace, bytes=10_000)
    await on_one.kv.put("small", b"x" * 4_000)
    status = await usage_reaches(on_one, "keys", 1)
    assert 4_000 < status.usage.bytes < 5_000  # key and stored record (value, provenance)
    before = namespace_keys(etcd, namespace)
    with pytest.raises(QuotaExceededError) as refused:
        await on_one.kv.put("big", b"x" * 8_000)
    assert_pushback(refused.value, "bytes", f"namespace:{namespace}")
    assert namespace_keys(etcd, namespace) == before
    await on_one.kv.put("fits", b"x" * 1_000)


async def test_leases_quota(
    replicas: list[Coordinator], namespace: str, on_one: AsyncClient, etcd: EtcdMember
) -> None:
    await set_quota(replicas, namespace, leases=2)
    first = await on_one.leases.grant(ttl=30, keepalive=False)
    await on_one.leases.grant(ttl=30, keepalive=False)
    await usage_reaches(on_one, "leases", 2)
    before = namespace_keys(etcd, namespace)
    with pytest.raises(QuotaExceededError) as refused:
        await on_one.leases.grant(ttl=30, keepalive=False)
    assert_pushback(refused.value, "leases", f"namespace:{namespace}")
    assert namespace_keys(etcd, namespace) == before
    await first.revoke()
    await usage_reaches(on_one, "leases", 1)
    await on_one.leases.grant(ttl=30, keepalive=False)


async def test_sessions_and_session_bytes_quotas(
    replicas: list[Coordinator], namespace: str, on_one: AsyncClient, etcd: EtcdMember
) -> None:
    await set_quota(replicas, namespace, sessions=1, session_bytes=20_000)
    await on_one.sessions.open("one", roots={"notes": "text"})
    await usage_reaches(on_one, "sessions", 1)
    before = namespace_keys(etcd, namespace)
    with pytest.raises(QuotaExceededError) as refused:
        await on_one.sessions.open("two")
    assert_pushback(refused.value, "sessions", f"namespace:{namespace}")
    assert namespace_keys(etcd, namespace) == before
    # Session bytes: updates are refused once they would pass the quota.
    await on_one.sessions.apply("one", ops.text_insert("notes", 0, "x" * 12_000))
    # A new namespace's session data is followed by a watch etcd catches up within ~100 ms.
    await until(
        on_one.quotas.get, lambda s: s.usage.session_bytes > 12_000, "the update is counted"
    )
    before = namespace_keys(etcd, namespace)
    with pytest.raises(QuotaExceededError) as refused:
        await on_one.sessions.apply("one", ops.text_insert("notes", 0, "y" * 12_000))
    assert_pushback(refused.value, "session_bytes", f"namespace:{namespace}")
    doc = Doc()
    doc.get("notes", type=Text).insert(0, "z" * 12_000)
    with pytest.raises(QuotaExceededError):
        await on_one.sessions.push("one", doc.get_update())
    assert namespace_keys(etcd, namespace) == before


async def test_open_votes_quota(
    replicas: list[Coordinator], namespace: str, on_one: AsyncClient, etcd: EtcdMember
) -> None:
    await set_quota(replicas, namespace, votes_open=1)
    first = await on_one.votes.propose("a?", ["yes", "no"], voters=["x", "y"], voting_period=600)
    await usage_reaches(on_one, "votes_open", 1)
    before = namespace_keys(etcd, namespace)
    with pytest.raises(QuotaExceededError) as refused:
        await on_one.votes.propose("b?", ["yes", "no"], voters=["x", "y"], voting_period=600)
    assert_pushback(refused.value, "votes_open", f"namespace:{namespace}")
    assert namespace_keys(etcd, namespace) == before
    await on_one.votes.cancel(first.id)  # closed: no longer counts as open
    await usage_reaches(on_one, "votes_open", 0)
    await on_one.votes.propose("b?", ["yes", "no"], voters=["x", "y"], voting_period=600)


async def test_usage_falls_when_a_lease_expires(
    replicas: list[Coordinator], namespace: str, on_one: AsyncClient
) -> None:
    lease = await on_one.leases.grant(ttl=2, keepalive=False)
    await on_one.kv.put("on-lease", b"v", lease=lease)
    await on_one.kv.put("kept", b"v")
    await usage_reaches(on_one, "keys", 2)
    await usage_reaches(on_one, "leases", 1)
    # etcd deletes the key and the lease record when the lease ends: the counts follow.
    await usage_reaches(on_one, "keys", 1)
    await usage_reaches(on_one, "leases", 0)


async def test_overwrites_and_deletes_move_usage_exactly(on_one: AsyncClient) -> None:
    await on_one.kv.put("k", b"x" * 100)
    await on_one.kv.put("k", b"x" * 3_000)
    await on_one.kv.put("k", b"x" * 2_000)
    await on_one.kv.put("gone", b"x" * 5_000)
    last = await on_one.kv.delete("gone")
    status = await until(
        on_one.quotas.get,
        lambda s: s.usage.revision >= last.revision,
        "the replica's counts reach the last write",
    )
    # One key of ~2,000 bytes: an overwrite replaces its old size, a delete frees it.
    assert status.usage.keys == 1
    assert 2_000 < status.usage.bytes < 2_300


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"keys": -1}, "limits.keys"),
        ({"requests_per_second": float("nan")}, "limits.requests_per_second"),
        ({"agent_requests_per_second": float("inf")}, "limits.agent_requests_per_second"),
        ({"burst_seconds": 0.0}, "limits.burst_seconds"),
    ],
)
async def test_bad_limits_are_refused_and_nothing_is_stored(
    replicas: list[Coordinator],
    namespace: str,
    etcd: EtcdMember,
    limits: dict[str, float],
    field: str,
) -> None:
    async with quota_admin(replicas, namespace) as admin:
        with pytest.raises(InvalidArgumentError) as refused:
            await admin.quotas.set(**limits)  # type: ignore[arg-type]
    assert [f for f, _ in refused.value.field_violations] == [field]
    assert etcd.kvs(f"accord/quotas/{namespace}") == []
