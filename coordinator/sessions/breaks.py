"""Deliberate session bugs for the fault suite's checkers to catch (tests/faults), switched
on only by ACCORD_TEST_BREAK (substrate/failpoints.py) in a test's replica. Off, each costs
one module-level boolean test per update or Apply.

- sessions.drop_fanout: one update in every DROP_EVERY that reaches this replica through
  its etcd watch is applied to its document but offered to none of its subscribers (a
  lost fan-out: their documents diverge until they resubscribe).
- sessions.apply_twice: Apply ignores its request_id, so a retry of an Apply that was
  applied (its answer lost) is applied again.

Error handling: none; these only change what is delivered or stored.
"""

from __future__ import annotations

import itertools

from accord.coordinator.substrate import failpoints

DROP_FANOUT = failpoints.broken("sessions.drop_fanout")
APPLY_TWICE = failpoints.broken("sessions.apply_twice")
DROP_EVERY = 3

_updates = itertools.count(1)


def drop_this_update() -> bool:
    """sessions.drop_fanout: whether to keep this update from the subscribers."""
    return next(_updates) % DROP_EVERY == 0
