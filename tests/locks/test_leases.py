"""Leases: liveness that outlives replicas, releases everything when it ends, and is
pushed to the agent when lost."""

from __future__ import annotations

import asyncio

import pytest

from accord.client import (
    AsyncClient,
    FencedError,
    InvalidArgumentError,
    LeaseNotFoundError,
)
from tests.harness import Coordinator, grant_labels, make_client


async def test_grant_keepalive_and_time_to_live(client: AsyncClient, namespace: str) -> None:
    grant_labels(namespace, client.agent_id, {"role": "reviewer"})
    lease = await client.leases.grant(ttl=3, labels={"role": "reviewer"})
    try:
        await asyncio.sleep(4)  # longer than the TTL: only the keep-alive keeps it
        info = await client.leases.time_to_live(lease.id)
        assert info.agent_id == "tester" and info.labels == {"role": "reviewer"}
        assert 0 < info.ttl <= 3 and info.granted_ttl == 3
        assert not lease.lost.is_set()
        assert await client.leases.keepalive_once(lease.id) == 3
    finally:
        await lease.revoke()
    with pytest.raises(LeaseNotFoundError):
        await client.leases.time_to_live(lease.id)


async def test_lease_expiry_releases_everything_attached(client: AsyncClient) -> None:
    lease = await client.leases.grant(ttl=2, keepalive=False)
    grant = await client.locks.acquire("L", lease)
    await client.kv.put("ephemeral", b"presence", lease=lease)
    await client.kv.put("durable", b"stays")
    await asyncio.sleep(4)  # no keep-alive: etcd ends the lease
    assert await client.kv.get("ephemeral") is None
    assert await client.kv.get("durable") is not None
    state, position = await client.locks.describe("L")
    assert list(state.holders) == [] and position == -2
    with pytest.raises((FencedError, LeaseNotFoundError)):
        await client.kv.put("durable", b"late", fence=grant)


async def test_losing_a_lease_is_pushed_to_the_agent(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    lease = await client.leases.grant(ttl=10)
    reasons: list[str] = []
    lease.on_lost(lambda reason: reasons.append(reason.reason))
    async with make_client([replicas[1].address], namespace, agent="admin") as admin:
        await admin.leases.revoke(lease.id)  # e.g. an operator ends it
    await asyncio.wait_for(lease.lost.wait(), 5)  # well before the 10 s TTL
    assert reasons == ["LEASE_NOT_FOUND"]
    assert isinstance(lease.lost_reason, LeaseNotFoundError)


async def test_a_replica_dying_does_not_end_a_lease(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    first, second = live_replicas
    async with make_client([first.address, second.address], namespace) as c:
        lease = await c.leases.grant(ttl=3)
        first.kill()  # the keep-alive stream moves to the other replica
        await asyncio.sleep(5)
        assert not lease.lost.is_set()
        info = await c.leases.time_to_live(lease.id)
        assert info.ttl > 0
        await lease.revoke()


async def test_leases_belong_to_their_namespace(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with (
        make_client([replicas[0].address], namespace) as mine,
        make_client([replicas[0].address], namespace + "-x") as other,
    ):
        lease = await mine.leases.grant(ttl=10)
        try:
            with pytest.raises(LeaseNotFoundError):
                await other.leases.revoke(lease.id)
            with pytest.raises(LeaseNotFoundError):
                await other.kv.put("k", b"v", lease=lease)
            with pytest.raises(LeaseNotFoundError):
                await other.locks.acquire("L", lease, wait=1)
            assert [i.id for i in await other.leases.list()] == []
            assert [i.id for i in await mine.leases.list()] == [lease.id]
        finally:
            await lease.revoke()


@pytest.mark.parametrize("ttl", [0, 1, 3601, -5])
async def test_bad_ttl_is_refused(client: AsyncClient, ttl: int) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        await client.leases.grant(ttl=ttl)
    assert err.value.field_violations[0][0] == "ttl_seconds"
    assert await client.leases.list() == []


async def test_unknown_lease_is_refused_everywhere(client: AsyncClient) -> None:
    for call in (
        client.leases.keepalive_once(12345),
        client.leases.revoke(12345),
        client.leases.time_to_live(12345),
        client.kv.put("k", b"v", lease=12345),
        client.locks.acquire("L", 12345, wait=1),
    ):
        with pytest.raises(LeaseNotFoundError):
            await call
    assert await client.kv.get("k") is None
