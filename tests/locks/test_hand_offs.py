"""Hand-offs: an exclusive waiter that comes first holds by its place in the queue, with
no second write, and its grant fences exactly as a marked one does; shared waiters that
come to hold behind another entry are still marked, and fence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from accord.client import AsyncClient, FencedError, Lease, LockMode
from accord.coordinator.substrate.keyspace import Keyspace
from accord.v1 import records_pb2
from tests.harness import Coordinator, EtcdMember, StoredKey, make_client, queued


@pytest.fixture
async def leases(client: AsyncClient) -> AsyncIterator[list[Lease]]:
    granted = [await client.leases.grant(ttl=10) for _ in range(3)]
    yield granted
    for lease in granted:
        await lease.revoke()


def entry(etcd: EtcdMember, namespace: str, lock: str, lease: Lease) -> StoredKey:
    key = Keyspace("accord").lock_entry(namespace, lock, lease.id)
    return next(kv for kv in etcd.stored(namespace) if kv.key == key)


async def test_a_hand_off_writes_only_the_release(
    client: AsyncClient, etcd: EtcdMember, namespace: str, leases: list[Lease]
) -> None:
    held = await client.locks.acquire("L", leases[0])
    waiting = asyncio.create_task(client.locks.acquire("L", leases[1], wait=20))
    await queued(client, "L", 1)
    await client.locks.release(held)
    grant = await asyncio.wait_for(waiting, 20)
    stored = entry(etcd, namespace, "L", leases[1])
    # The waiter's entry is as it was written when it joined: holding needed no write.
    assert stored.create_revision == stored.mod_revision == grant.token
    assert not records_pb2.LockEntryRecord.FromString(stored.value).granted


async def test_a_retried_acquire_elsewhere_finds_the_handed_off_grant_unwritten(
    client: AsyncClient,
    replicas: list[Coordinator],
    etcd: EtcdMember,
    namespace: str,
    leases: list[Lease],
) -> None:
    held = await client.locks.acquire("L", leases[0])
    waiting = asyncio.create_task(client.locks.acquire("L", leases[1], wait=20))
    await queued(client, "L", 1)
    await client.locks.release(held)
    grant = await asyncio.wait_for(waiting, 20)
    # As after an ambiguous failure: the same acquire again, on each replica. It finds the
    # lease's entry first in the queue, so holding, and answers the same grant.
    for replica in replicas:
        async with make_client([replica.address], namespace) as again:
            assert await again.locks.acquire("L", leases[1], wait=5) == grant
    stored = entry(etcd, namespace, "L", leases[1])
    assert stored.create_revision == stored.mod_revision == grant.token


async def test_a_handed_off_grant_fences_as_a_marked_one(
    client: AsyncClient, etcd: EtcdMember, namespace: str, leases: list[Lease]
) -> None:
    held = await client.locks.acquire("L", leases[0])
    waiting = asyncio.create_task(client.locks.acquire("L", leases[1], wait=20))
    await queued(client, "L", 1)
    assert await client.locks.release(held) is True
    grant = await asyncio.wait_for(waiting, 20)
    written = await client.kv.put("doc", b"by the new holder", fence=grant)
    before = etcd.stored(namespace)
    with pytest.raises(FencedError) as err:  # the old holder's token, after the hand-off
        await client.kv.put("doc", b"stale", fence=held)
    assert err.value.current_tokens == [grant.token]
    assert etcd.stored(namespace) == before  # the refused write changed nothing
    assert await client.locks.release(grant) is True  # it held, by its place in the queue
    with pytest.raises(FencedError):
        await client.kv.put("doc", b"after release", fence=grant)
    doc = await client.kv.get("doc")
    assert doc is not None and doc.mod_revision == written.revision


async def test_shared_waiters_behind_the_first_are_marked_and_fence(
    client: AsyncClient, etcd: EtcdMember, namespace: str, leases: list[Lease]
) -> None:
    held = await client.locks.acquire("L", leases[0])
    shared = [
        asyncio.create_task(client.locks.acquire("L", lease, mode=LockMode.SHARED, wait=20))
        for lease in leases[1:]
    ]
    await queued(client, "L", 2)
    await client.locks.release(held)
    first, second = [await asyncio.wait_for(task, 20) for task in shared]
    # The second shared holder is not first in the queue: it holds by its mark.
    marked = entry(etcd, namespace, "L", leases[2])
    assert marked.mod_revision > marked.create_revision == second.token
    assert records_pb2.LockEntryRecord.FromString(marked.value).granted
    await client.kv.put("k", b"v", fence=second)
    await client.locks.release(first)
    await client.kv.put("k", b"still held", fence=second)
    assert await client.locks.release(second) is True
