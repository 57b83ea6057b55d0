"""The wall clock a replica's votes read (deadlines, timers, cast times, vote ids).

In production `now` is time.time itself. For the fault suite's clock skew, a test starts a
replica with ACCORD_TEST_CLOCK_OFFSET_FILE naming a file that holds a number of seconds
(a float; may be negative); `now` then adds it to time.time(). The file is read again at
most every 50 ms (of the monotonic clock), so a test skews a running replica by
rewriting it. The host clock is never touched, and a skew moves only this replica's
votes, as a skewed host would.

Read once at import: unset, the skew code is never reached.

Error handling: an empty file means no offset; a missing or unreadable one (or one
half-written) leaves the last offset read in force (none at first). Never raises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

_FILE = os.environ.get("ACCORD_TEST_CLOCK_OFFSET_FILE", "")
_REREAD_SECONDS = 0.05


class _SkewedClock:
    """time.time() plus the offset in a file, re-read at most every _REREAD_SECONDS."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._offset = 0.0
        self._read_at = float("-inf")

    def __call__(self) -> float:
        moment = time.monotonic()
        if moment - self._read_at >= _REREAD_SECONDS:
            self._read_at = moment
            try:
                with open(self._path, encoding="ascii") as f:
                    text = f.read().strip()
                self._offset = float(text) if text else 0.0
            except (OSError, ValueError):
                pass
        return time.time() + self._offset


now: Callable[[], float] = _SkewedClock(_FILE) if _FILE else time.time
