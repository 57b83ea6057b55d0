"""Semaphore waiters count the deletions ahead of them: a release wakes only the waiter it
lets in (the others read nothing from etcd), entries ahead that leave without holding
count too, a wait resumed by a retry counts afresh, and the order stays FIFO."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.request
from collections.abc import AsyncIterator

import pytest

from accord.client import AsyncClient, Grant, Lease, LockTimeoutError
from accord.client import calls as client_calls
from accord.v1 import locks_pb2
from tests.harness import EtcdMember, queued
from tests.locks.test_leases_list import etcd_calls

WAITERS = 40


@contextlib.asynccontextmanager
async def granted(client: AsyncClient, count: int) -> AsyncIterator[list[Lease]]:
    leases = list(
        await asyncio.gather(*(client.leases.grant(ttl=120, keepalive=False) for _ in range(count)))
    )
    try:
        yield leases
    finally:
        await asyncio.gather(*(lease.revoke() for lease in leases), return_exceptions=True)


async def line_up(
    client: AsyncClient, lock: str, leases: list[Lease], permits: int, ahead: int = 0
) -> list[asyncio.Task[Grant]]:
    """One waiting acquire per lease, started one after the other (their queue order)."""
    tasks: list[asyncio.Task[Grant]] = []
    for lease in leases:
        tasks.append(
            asyncio.create_task(client.locks.acquire(lock, lease, permits=permits, wait=120))
        )
        await queued(client, lock, ahead + len(tasks), timeout=30)
    return tasks


async def settle(tasks: list[asyncio.Task[Grant]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def etcd_watchers(etcd: EtcdMember) -> int:
    """The watchers etcd holds now (every client's), from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://{etcd.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.M)
    assert found is not None
    return int(float(found.group(1)))


def etcd_reads(etcd: EtcdMember) -> int:
    """Every Range and Txn etcd has answered (a look is a Txn of ranges)."""
    return etcd_calls(etcd, "Range") + etcd_calls(etcd, "Txn")


async def test_a_release_reads_nothing_for_the_waiters_it_does_not_let_in(
    client: AsyncClient, etcd: EtcdMember
) -> None:
    async with granted(client, 2 + WAITERS) as leases:
        holders = [await client.locks.acquire("quota", lease, permits=2) for lease in leases[:2]]
        tasks = await line_up(client, "quota", leases[2:], permits=2)
        try:
            before = etcd_reads(etcd)
            # Three hand-offs: each release lets exactly the oldest waiter in, in order.
            await client.locks.release(holders[0])
            first = await asyncio.wait_for(tasks[0], 30)
            await client.locks.release(holders[1])
            second = await asyncio.wait_for(tasks[1], 30)
            await client.locks.release(first)
            third = await asyncio.wait_for(tasks[2], 30)
            # Every waiter still in line has had time to react to all three releases:
            # a fourth hand-off goes through the same replica after them.
            await client.locks.release(second)
            await asyncio.wait_for(tasks[3], 30)
            reads = etcd_reads(etcd) - before
            assert [g.lease_id for g in (first, second, third)] == [x.id for x in leases[2:5]]
            assert not any(t.done() for t in tasks[4:])
            # Each hand-off costs the release, the woken waiter's look and its mark (and a
            # little background work); a read per waiter would be 4 x 40.
            print(f"etcd Range+Txn calls for 4 hand-offs with {WAITERS} waiters: {reads}")
            assert reads < WAITERS
        finally:
            await settle(tasks)


def raw_acquire(client: AsyncClient, lock: str, lease: Lease) -> asyncio.Task[object]:
    """An acquire that, cancelled, leaves its entry in line (as a failover does)."""
    request = locks_pb2.AcquireRequest(name=lock, lease_id=lease.id, permits=1, timeout_ms=120_000)
    return asyncio.create_task(
        client.locks._t.unary(client_calls.LOCKS_ACQUIRE, request, timeout=130)
    )


async def test_the_waiters_of_a_queue_share_one_watch_of_it(
    client: AsyncClient, etcd: EtcdMember
) -> None:
    async with granted(client, 1 + WAITERS) as leases:
        held = await client.locks.acquire("shared-watch", leases[0], permits=1)
        before = etcd_watchers(etcd)
        tasks = await line_up(client, "shared-watch", leases[1:], permits=1)
        try:
            # One feed per replica the waiters' calls went to (and any other client's
            # watchers meanwhile), not one watcher per waiter.
            assert etcd_watchers(etcd) - before < WAITERS // 4
            await client.locks.release(held)
            first = await asyncio.wait_for(tasks[0], 30)
            await client.locks.release(first)
            assert (await asyncio.wait_for(tasks[1], 30)).lease_id == leases[2].id
        finally:
            await settle(tasks)


async def test_waiters_ahead_that_leave_count_and_a_resumed_wait_counts_again(
    client: AsyncClient,
) -> None:
    async with granted(client, 7) as leases:
        holder = await client.locks.acquire("pool", leases[0], permits=1)
        ahead = await line_up(client, "pool", leases[1:4], permits=1)
        first_call = raw_acquire(client, "pool", leases[4])
        await queued(client, "pool", 4)
        behind = await line_up(client, "pool", leases[5:], permits=1, ahead=4)
        resumed = None
        try:
            # Behind it: a waiter leaving changes nothing for it.
            await leases[6].revoke()
            # Ahead of it: two waiters leave without ever holding (a lease that ends, and
            # a call its client gives up, which releases).
            await leases[1].revoke()
            ahead[1].cancel()
            await asyncio.gather(*ahead[:2], return_exceptions=True)
            # Its call is cut off and retried (as after a failover): the retry finds its
            # entry, keeps its place and counts what is ahead afresh.
            first_call.cancel()
            await asyncio.gather(first_call, return_exceptions=True)
            resumed = raw_acquire(client, "pool", leases[4])
            await asyncio.sleep(1)  # (the outcome is the same if it is not waiting yet)
            state, _ = await client.locks.describe("pool")
            assert [w.lease_id for w in state.waiters] == [lease.id for lease in leases[3:6]]
            await client.locks.release(holder)
            third = await asyncio.wait_for(ahead[2], 30)
            assert third.lease_id == leases[3].id
            assert not resumed.done()
            await client.locks.release(third)
            got = await asyncio.wait_for(resumed, 30)
            assert isinstance(got, locks_pb2.AcquireResponse)
            assert got.grant.lease_id == leases[4].id and got.grant.permits == 1
            assert not behind[0].done()
            await client.locks.release("pool", leases[4])
            assert (await asyncio.wait_for(behind[0], 30)).lease_id == leases[5].id
        finally:
            await settle([*ahead, *behind])
            for call in (first_call, resumed):
                if call is not None:
                    call.cancel()
                    await asyncio.gather(call, return_exceptions=True)


async def test_a_counting_wait_still_times_out_and_leaves(client: AsyncClient) -> None:
    async with granted(client, 3) as (holder, first, second):
        held = await client.locks.acquire("slots", holder, permits=1)
        [waiting] = await line_up(client, "slots", [first], permits=1)
        try:
            # Nothing it counts happens: it gives up at its own time, and leaves the queue.
            with pytest.raises(LockTimeoutError):
                await asyncio.wait_for(
                    client.locks.acquire("slots", second, permits=1, wait=1.5), 30
                )
            state, _ = await client.locks.describe("slots")
            assert [w.lease_id for w in state.waiters] == [first.id]
            await client.locks.release(held)
            assert (await asyncio.wait_for(waiting, 30)).lease_id == first.id
        finally:
            await settle([waiting])
