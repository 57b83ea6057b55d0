"""AcquireMany: several locks for one lease, all or none.

The locks are taken one after another in name order (the canonical order, so two such
calls cannot deadlock each other over their own locks), within one overall timeout. If
one fails, the call gives back the locks it took itself; a lock the lease held before
the call stays held.

Error handling: an empty list, a repeated name or more than MAX_LOCKS_PER_CALL locks is
INVALID_ARGUMENT before anything is taken; otherwise the failing acquire's error, after
the locks taken are given back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from accord.coordinator.locks.store import LockStore
from accord.coordinator.substrate.errors import FieldViolation, InvalidArgument
from accord.coordinator.substrate.limits import MAX_LOCKS_PER_CALL, require_counts
from accord.v1 import locks_pb2


async def acquire_many(
    locks: LockStore,
    specs: Sequence[locks_pb2.LockSpec],
    lease_id: int,
    *,
    no_wait: bool,
    timeout_ms: int,
    priority: int,
) -> list[locks_pb2.Grant]:
    """Every lock of specs for one lease, taken one by one in name order within one
    timeout; when one fails, the locks this call took are given back."""
    require_counts(("locks", len(specs), MAX_LOCKS_PER_CALL))
    names = [s.name for s in specs]
    if not specs:
        raise InvalidArgument([FieldViolation("locks", "name at least one lock")])
    if len(set(names)) != len(names):
        raise InvalidArgument([FieldViolation("locks", "a lock appears more than once")])
    grants: list[locks_pb2.Grant] = []
    taken: list[locks_pb2.Grant] = []  # made by this call: the only ones to give back
    give_up = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
    try:
        for spec in sorted(specs, key=lambda s: s.name):  # the canonical order
            left_ms = 0 if give_up is None else max(1, int((give_up - time.monotonic()) * 1000))
            grant, created = await locks.acquire(
                spec.name,
                lease_id,
                mode=spec.mode,
                permits=spec.permits,
                no_wait=no_wait,
                timeout_ms=left_ms,
                priority=priority,
            )
            grants.append(grant)
            if created:
                taken.append(grant)
    except BaseException:
        for grant in taken:  # locks held before the call stay held
            await locks.release(grant.name, lease_id, token=grant.token, missing_ok=True)
        raise
    return grants
