"""A lock's state as callers see it: holders and waiters with their leases' time left.
Describe returns it whole. Every refusal of a wait (WOULD_BLOCK, LOCK_TIMEOUT) carries its
head (the holders and the first waiters, SHOWN entries at most) with the totals, so its
cost and size do not grow with the queue; AccordError.to_status trims it further if it
would still pass the trailer budget.

Error handling: etcd failures propagate as AccordErrors from substrate.etcd.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from accord.coordinator.locks.looks import PAGE, ahead_op, head_op
from accord.coordinator.locks.queue import SHARED, Entry, entry_of, holders, is_granted
from accord.coordinator.substrate import Substrate
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.txn import count, read, txn
from accord.v1 import locks_pb2

SHOWN = 32  # entries of a queue that a refused wait's details list


async def lock_state(
    etcd: Etcd, name: str, queue: Sequence[Entry], *, ttl_of_waiters: bool = True
) -> locks_pb2.LockState:
    """The state of queue (the whole queue, or its first entries): one etcd TTL request
    per entry (per holder only without ttl_of_waiters)."""
    held = [is_granted(queue, i) for i in range(len(queue))]
    ttls = await asyncio.gather(
        *(
            _ttl(etcd, e.lease_id)
            for e, holding in zip(queue, held, strict=True)
            if holding or ttl_of_waiters
        )
    )
    ttl_of = iter(ttls)
    state = locks_pb2.LockState(name=name, permits=queue[0].record.permits if queue else 0)
    for i, entry in enumerate(queue):
        ttl = next(ttl_of) if held[i] or ttl_of_waiters else 0
        item = locks_pb2.LockEntry(
            lease_id=entry.lease_id,
            agent_id=entry.record.agent_id,
            mode=entry.mode,
            token=entry.token,
            holding=held[i],
            since=entry.record.since,
            lease_ttl_seconds=ttl,
            priority=entry.record.priority,
        )
        (state.holders if item.holding else state.waiters).append(item)
    return state


async def _ttl(etcd: Etcd, lease_id: int) -> int:
    return max(int((await etcd.lease_time_to_live(lease_id)).TTL), 0)


async def refusal_status(
    s: Substrate, namespace: str, entry: Entry
) -> tuple[locks_pb2.LockWaitStatus, str]:
    """Where a waiting entry stands, for a WOULD_BLOCK or LOCK_TIMEOUT: the queue's first
    SHOWN entries (lease TTLs for holders only), the totals, the entry's position among
    the waiters; and the same in words. Its cost: one etcd read of SHOWN entries, the
    count, and the keys (not the values) ahead of the entry; a TTL request per holder
    shown."""
    queue = entry.key[: entry.key.rindex(b"\x00") + 1]
    ahead = ahead_op(queue, entry.token, 0, newest_first=False)
    ahead.request_range.keys_only = True
    response = await s.etcd.txn(
        txn(when=[], then=[head_op(queue, SHOWN), count(queue, prefix=True), ahead]), retry=True
    )
    first, total, before = (r.response_range for r in response.responses)
    shown = [entry_of(s.keys, namespace, kv) for kv in first.kvs]
    held = await _holders_total(s, namespace, queue, shown, int(total.count))
    state = await lock_state(s.etcd, entry.lock, shown, ttl_of_waiters=False)
    status = locks_pb2.LockWaitStatus(
        state=state,
        position=len(before.kvs) - held,
        holders_total=held,
        waiters_total=int(total.count) - held,
    )
    who = ", ".join(
        f"{h.agent_id or 'lease ' + str(h.lease_id)} (token {h.token})" for h in state.holders
    )
    if held > len(state.holders):
        who += f" and {held - len(state.holders)} more"
    waiting = int(total.count) - held
    text = f"held by {who}; {waiting} waiting" if held else "nobody holds it"
    return status, text


async def _holders_total(
    s: Substrate, namespace: str, queue: bytes, shown: list[Entry], total: int
) -> int:
    """How many hold: a prefix of the queue, so counted from its head (past the entries
    shown only for a run of shared holders longer than that)."""
    held = len(holders(shown))
    if held < len(shown) or held == total or not shown:
        return held
    if shown[0].record.permits:
        return min(shown[0].record.permits, total)
    last = shown[-1].token
    while True:  # shared holders beyond those shown: count up to the first exclusive
        request = read(queue, prefix=True, by_creation=True)
        request.min_create_revision = last + 1
        request.limit = PAGE
        page = [entry_of(s.keys, namespace, kv) for kv in (await s.etcd.range(request)).kvs]
        run = next((i for i, e in enumerate(page) if e.mode != SHARED), len(page))
        held += run
        if run < len(page) or len(page) < PAGE:
            return held
        last = page[-1].token
