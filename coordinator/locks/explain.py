"""A lock's state as callers see it: holders and waiters with their leases' time left.
Every refusal of a wait (WOULD_BLOCK, LOCK_TIMEOUT) carries it, and Describe returns it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from accord.coordinator.locks.queue import Entry, holders, is_granted
from accord.coordinator.substrate.etcd import Etcd
from accord.v1 import locks_pb2


async def lock_state(etcd: Etcd, name: str, queue: Sequence[Entry]) -> locks_pb2.LockState:
    ttls = await asyncio.gather(*(etcd.lease_time_to_live(e.lease_id) for e in queue))
    state = locks_pb2.LockState(name=name, permits=queue[0].record.permits if queue else 0)
    for i, (entry, ttl) in enumerate(zip(queue, ttls, strict=True)):
        item = locks_pb2.LockEntry(
            lease_id=entry.lease_id,
            agent_id=entry.record.agent_id,
            mode=entry.mode,
            token=entry.token,
            holding=is_granted(queue, i),
            since=entry.record.since,
            lease_ttl_seconds=max(ttl.TTL, 0),
            priority=entry.record.priority,
        )
        (state.holders if item.holding else state.waiters).append(item)
    return state


async def wait_status(
    etcd: Etcd, name: str, queue: Sequence[Entry], index: int
) -> locks_pb2.LockWaitStatus:
    """Where queue[index] waits: the lock's state and its place among the waiters."""
    return locks_pb2.LockWaitStatus(
        state=await lock_state(etcd, name, queue), position=index - len(holders(queue))
    )
