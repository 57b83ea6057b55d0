"""Deliberate KV bugs for the fault suite's checkers to catch (tests/faults), switched on
only by ACCORD_TEST_BREAK (substrate/failpoints.py) in a test's replica. Off, each costs
the store one module-level boolean test per call.

- kv.stale_reads: a get is answered from what this replica last read of the key, for
  STALE_FOR seconds, whatever the requested consistency (a read cache with no
  invalidation: the classic stale read).
- watch.drop_one: a watch opened at a start_revision (a resume) loses its first event.

Error handling: none; these only change answers.
"""

from __future__ import annotations

import time

from accord.coordinator.substrate import failpoints
from accord.v1 import kv_pb2

STALE_READS = failpoints.broken("kv.stale_reads")
DROP_ONE = failpoints.broken("watch.drop_one")
STALE_FOR = 0.5

Answer = tuple[int, kv_pb2.KeyValue | None]
_last_read: dict[bytes, tuple[float, Answer]] = {}


def cached_read(key: bytes) -> Answer | None:
    """kv.stale_reads: the answer this replica gave for key less than STALE_FOR ago."""
    seen = _last_read.get(key)
    if seen is None or time.monotonic() - seen[0] > STALE_FOR:
        return None
    return seen[1]


def remember_read(key: bytes, answer: Answer) -> None:
    _last_read[key] = (time.monotonic(), answer)
