"""The tarpit: a rate refusal is answered when the caller may come back, not at once.

A caller that ignores RetryInfo and calls again as soon as it is refused (a broken or
hostile fleet) would otherwise cost the replica a whole gRPC call per refusal, as fast
as it can send them: thousands a second, taken from every other namespace on the
replica. So a refusal for a request rate (RateExceeded) is held for the time its
RetryInfo asks, at most MAX_HOLD_SECONDS (`accord serve --rate-refusal-hold`; 0 answers
at once), and answered then with the RetryInfo left
(1 ms when the whole wait was held): a retry loop, however naive, is paced by the
replica at about the rate it was given, and a caller honouring RetryInfo loses nothing
(it comes back when it would have). Count refusals (a quota of keys, leases, ...) are
answered at once: waiting does not free them.

A held refusal is answered before the caller's deadline, never after it: it is held at
most until DEADLINE_MARGIN_SECONDS before that deadline, so the caller still gets
RESOURCE_EXHAUSTED with RetryInfo and never DEADLINE_EXCEEDED (a deadline closer than the
margin is answered at once). What held calls cost is bounded: at most
MAX_HELD_PER_NAMESPACE per namespace and MAX_HELD in all on a replica, whose requests
add up to at most MAX_HELD_BYTES (gRPC's handler keeps a request until its call ends);
a refusal past any of them is answered at once, as without the tarpit. Nothing else of
the refused call is kept while it is held: the refusal only, its traceback (the frames
that saw the request) cut. Admitted calls never come here.

Error handling: `answer` never raises a refusal of its own; a held call cancelled by
its caller (or by the server stopping) ends with CancelledError, its place freed.
"""

from __future__ import annotations

import asyncio
import time

from accord.coordinator.substrate.errors import RateExceeded

MAX_HOLD_SECONDS = 1.0
DEADLINE_MARGIN_SECONDS = 0.2
MAX_HELD_PER_NAMESPACE = 256
MAX_HELD = 1024
MAX_HELD_BYTES = 16 * 1024 * 1024
# A request admission did not measure (a read) counts as this much against MAX_HELD_BYTES.
SMALL_REQUEST_BYTES = 1024
MIN_HOLD_SECONDS = 0.002  # shorter holds are not worth a timer


class Tarpit:
    """Held rate refusals on this replica: how many, per namespace, and their bytes."""

    def __init__(
        self,
        *,
        max_hold: float = MAX_HOLD_SECONDS,
        per_namespace: int = MAX_HELD_PER_NAMESPACE,
        total: int = MAX_HELD,
        max_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.max_hold = max_hold
        self._per_namespace = per_namespace
        self._total = total
        self._max_bytes = max_bytes
        self._held: dict[str, int] = {}
        self.held = 0  # refusals being held now
        self.held_bytes = 0
        self.answered_at_once = 0  # rate refusals past a bound (benchmarks read it)

    def hold_seconds(self, refusal: RateExceeded, deadline: float | None, now: float) -> float:
        """How long to hold this refusal: its RetryInfo, capped, and bounded by the
        caller's deadline less the margin (0: answer now)."""
        hold = min(refusal.retry_after, self.max_hold)
        if deadline is not None:
            hold = min(hold, deadline - now - DEADLINE_MARGIN_SECONDS)
        return hold if hold >= MIN_HOLD_SECONDS else 0.0

    async def answer(
        self, refusal: RateExceeded, namespace: str, deadline: float | None
    ) -> RateExceeded:
        """The refusal to send: after holding it (with the RetryInfo left), or at once
        when it cannot be held."""
        refusal.__traceback__ = refusal.__context__ = refusal.__cause__ = None
        started = time.monotonic()
        hold = self.hold_seconds(refusal, deadline, started)
        if hold <= 0:
            return refusal
        size = max(refusal.request_bytes, SMALL_REQUEST_BYTES)
        in_namespace = self._held.get(namespace, 0)
        if (
            in_namespace >= self._per_namespace
            or self.held >= self._total
            or self.held_bytes + size > self._max_bytes
        ):
            self.answered_at_once += 1
            return refusal
        self._held[namespace] = in_namespace + 1
        self.held += 1
        self.held_bytes += size
        try:
            await asyncio.sleep(hold)
        finally:
            self.held -= 1
            self.held_bytes -= size
            left = self._held[namespace] - 1
            if left:
                self._held[namespace] = left
            else:
                del self._held[namespace]
        return refusal.after(time.monotonic() - started)
