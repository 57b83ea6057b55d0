"""Deliberate session bugs for the fault suite's checkers to catch (tests/faults), switched
on only by ACCORD_TEST_BREAK (substrate/failpoints.py) in a test's replica. Off, each costs
one module-level boolean test per update or Apply.

- sessions.drop_fanout: one update in every DROP_EVERY that reaches this replica through
  its etcd watch is applied to its document but offered to none of its subscribers (a
  lost fan-out: their documents diverge until they resubscribe).
- sessions.apply_twice: Apply ignores its request_id, so a retry of an Apply that was
  applied (its answer lost) is applied again.
- sessions.stale_reads: a Read is answered with what this replica answered for the
  session less than STALE_FOR seconds ago (a read cache with no invalidation).

Error handling: none; these only change what is delivered or stored.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from accord.coordinator.substrate import failpoints

DROP_FANOUT = failpoints.broken("sessions.drop_fanout")
APPLY_TWICE = failpoints.broken("sessions.apply_twice")
STALE_READS = failpoints.broken("sessions.stale_reads")
DROP_EVERY = 3
STALE_FOR = 0.5
T = TypeVar("T")

_updates = itertools.count(1)


def drop_this_update() -> bool:
    """sessions.drop_fanout: whether to keep this update from the subscribers."""
    return next(_updates) % DROP_EVERY == 0


_last_read: dict[bytes, tuple[float, Any]] = {}


async def stale_read(key: bytes, fresh: Callable[[], Awaitable[T]]) -> T:
    """sessions.stale_reads: the answer given for key less than STALE_FOR ago, if any;
    else fresh(), remembered."""
    seen = _last_read.get(key)
    if seen is not None and time.monotonic() - seen[0] <= STALE_FOR:
        return cast(T, seen[1])
    answer = await fresh()
    _last_read[key] = (time.monotonic(), answer)
    return answer
