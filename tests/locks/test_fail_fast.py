"""A lock wait fails fast when the replica has seen enough holds end to know the waiters
ahead take longer than the caller's time left (coordinator/locks/holds.py), and never
without that evidence. Every call of a test goes through one replica (pinned): the
typical hold is that replica's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from accord.client import AsyncClient, Lease, LockTimeoutError, deadline
from tests.harness import queued, until

HOLD = 0.6  # seconds each learning hold lasts
PATIENT = 60.0  # the waiters ahead wait far longer than the test runs


async def _learn(
    client: AsyncClient, lock: str, holds: int, permits: int = 0, hold: float = HOLD
) -> None:
    """holds uncontended holds of lock, each hold seconds, released through this replica."""
    for _ in range(holds):
        lease = await client.leases.grant(ttl=30)
        grant = await client.locks.acquire(lock, lease, permits=permits)
        await asyncio.sleep(hold)  # the hold itself: what the replica learns
        await client.locks.release(grant)
        await lease.revoke()


@pytest.fixture
async def line(pinned: list[AsyncClient]) -> AsyncIterator[list[asyncio.Task[object]]]:
    """Where the waiters ahead of the test's own acquire wait; cancelled (so leaving
    their queues) at the end."""
    tasks: list[asyncio.Task[object]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _queue_up(
    client: AsyncClient,
    lock: str,
    line: list[asyncio.Task[object]],
    holders: int,
    waiters: int,
    permits: int = 0,
) -> None:
    for _ in range(holders):
        await client.locks.acquire(lock, await client.leases.grant(ttl=30), permits=permits)
    for _ in range(waiters):
        lease = await client.leases.grant(ttl=30)
        line.append(
            asyncio.create_task(client.locks.acquire(lock, lease, permits=permits, wait=PATIENT))
        )
    await queued(client, lock, waiters)


async def _waiting_leases(client: AsyncClient, lock: str) -> list[int]:
    state, _ = await client.locks.describe(lock)
    return [w.lease_id for w in state.waiters]


async def test_a_wait_fails_fast_once_the_replica_has_seen_holds(
    pinned: list[AsyncClient], line: list[asyncio.Task[object]]
) -> None:
    client = pinned[0]
    await _learn(client, "hot", 4)
    await _queue_up(client, "hot", line, holders=1, waiters=3)
    before = await _waiting_leases(client, "hot")
    hurried: Lease = await client.leases.grant(ttl=30)
    with deadline(1.0), pytest.raises(LockTimeoutError) as refused:
        await client.locks.acquire("hot", hurried, wait=PATIENT)
    estimate = refused.value.fail_fast
    assert estimate is not None, refused.value.message
    assert estimate.position == 3 and estimate.samples == 4
    assert HOLD * 0.5 < estimate.typical_hold < HOLD * 5
    assert estimate.expected_wait == pytest.approx(3 * estimate.typical_hold, abs=0.002)
    assert estimate.remaining < estimate.expected_wait
    assert refused.value.metadata["lock"] == "hot"
    status = refused.value.status
    assert status is not None and status.position == 3 and status.waiters_total == 4
    assert status.holders_total == 1
    assert await _waiting_leases(client, "hot") == before  # it did not stay in line
    assert hurried.id not in before


async def test_holds_granted_after_a_wait_teach_too(
    pinned: list[AsyncClient], line: list[asyncio.Task[object]]
) -> None:
    """A chain of hand-offs: each waiter's hold is timed from the grant this replica
    answered it (its entry was not created holding, so nothing else dates it)."""
    client = pinned[0]
    grant = await client.locks.acquire("chain", await client.leases.grant(ttl=30))
    for _ in range(4):
        waiting = asyncio.create_task(
            client.locks.acquire("chain", await client.leases.grant(ttl=30), wait=PATIENT)
        )
        await queued(client, "chain", 1)
        await client.locks.release(grant)
        grant = await waiting
        await asyncio.sleep(HOLD)  # the hold itself: what the replica learns
    # The first hold was created holding (1 sample); the 3 released after a wait: 3 more.
    await _queue_up(client, "chain", line, holders=0, waiters=3)
    hurried = await client.leases.grant(ttl=30)
    with deadline(1.0), pytest.raises(LockTimeoutError) as refused:
        await client.locks.acquire("chain", hurried, wait=PATIENT)
    estimate = refused.value.fail_fast
    assert estimate is not None, refused.value.message
    assert estimate.samples == 4 and estimate.position == 3


async def test_a_semaphore_wait_counts_its_permits(
    pinned: list[AsyncClient], line: list[asyncio.Task[object]]
) -> None:
    """Two permits: the two waiters ahead take one typical hold (about 1 s), not two. A
    caller with about 1.6 s left waits (and times out plainly); one with about 0.6 s
    fails fast."""
    client = pinned[0]
    await _learn(client, "pool", 3, permits=2, hold=1.0)
    await _queue_up(client, "pool", line, holders=2, waiters=2, permits=2)
    hurried = await client.leases.grant(ttl=30)
    with deadline(2.0), pytest.raises(LockTimeoutError) as waited:
        await client.locks.acquire("pool", hurried, permits=2, wait=PATIENT)
    assert waited.value.fail_fast is None, waited.value.message
    with deadline(0.8), pytest.raises(LockTimeoutError) as refused:
        await client.locks.acquire("pool", hurried, permits=2, wait=PATIENT)
    estimate = refused.value.fail_fast
    assert estimate is not None, refused.value.message
    assert estimate.position == 2
    assert estimate.expected_wait == pytest.approx(estimate.typical_hold, abs=0.002)
    assert hurried.id not in await _waiting_leases(client, "pool")


async def test_no_fail_fast_without_enough_samples(
    pinned: list[AsyncClient], line: list[asyncio.Task[object]]
) -> None:
    """Two holds seen are not evidence: the wait goes on until the caller's time is up
    (a plain LOCK_TIMEOUT), and still leaves no entry behind."""
    client = pinned[0]
    await _learn(client, "cold", 2)
    await _queue_up(client, "cold", line, holders=1, waiters=3)
    hurried = await client.leases.grant(ttl=30)
    with deadline(1.0), pytest.raises(LockTimeoutError) as refused:
        await client.locks.acquire("cold", hurried, wait=PATIENT)
    assert refused.value.fail_fast is None
    assert "fail_fast" not in refused.value.metadata

    async def waiting() -> list[int]:
        return await _waiting_leases(client, "cold")

    await until(waiting, lambda w: hurried.id not in w and len(w) == 3, "the queue as before")


async def test_no_fail_fast_when_the_time_left_is_enough(pinned: list[AsyncClient]) -> None:
    """With the evidence but time to spare (one waiter ahead: one typical hold, well
    within 20 s), the wait goes on and is granted in turn."""
    client = pinned[0]
    await _learn(client, "roomy", 3)
    first = await client.locks.acquire("roomy", await client.leases.grant(ttl=30))
    ahead = asyncio.create_task(
        client.locks.acquire("roomy", await client.leases.grant(ttl=30), wait=PATIENT)
    )
    await queued(client, "roomy", 1)
    mine = await client.leases.grant(ttl=30)

    async def patient() -> int:
        with deadline(20):
            return (await client.locks.acquire("roomy", mine, wait=PATIENT)).lease_id

    waiting = asyncio.create_task(patient())
    await queued(client, "roomy", 2)
    await client.locks.release(first)
    await client.locks.release(await ahead)
    assert await waiting == mine.id
