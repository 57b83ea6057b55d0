"""The ambient deadline: a budget an agent sets once per task, which every Accord call
made inside it respects.

``with deadline(seconds=30):`` (or ``deadline(at=unix_seconds)``) sets it for the code
inside, in this task or thread and in what they start (a contextvar: asyncio tasks
created inside copy it, and the blocking client's calls carry it to its loop thread).
Nested deadlines take the earlier. Each unary call then uses min(its own timeout, the
time left) as its gRPC deadline, retries and replica failover included, and a call made
once the time is up fails at once with DeadlineExceededError, never sent. A lock wait is
a call, so the budget bounds it (the server answers LOCK_TIMEOUT, with who holds the
lock, just before the deadline, or at once when its queue is known to be too slow).

Not bounded: giving back (lock release, lease revoke, leaving a queue after a failed
wait: skipping them would keep others waiting), the client's background work (lease
keep-alive, session sync, KV batches: each batched operation keeps its own bounded
timeout), and long-lived streams (watches, subscriptions): they are subscriptions the
caller ends by leaving them, and cutting them at the deadline would look like a broken
stream; bound an iteration with ``asyncio.timeout(remaining())`` where it matters.

While a deadline is set, unary calls carry W3C baggage member ``accord.deadline`` (the
absolute Unix time in ms at which it ends), merged with any OpenTelemetry baggage of the
current context. A write records it beside its provenance, so an agent reacting to what
was written inherits the rest of its upstream's budget: ``with deadline_from(event):``.

Error handling: bad arguments raise ValueError. An inherited value is untrusted: a
baggage header longer than 2048 bytes, a malformed member, or a time absurdly far from
now is ignored (no deadline is set from it), never an error.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
import time
from collections.abc import Iterator

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context_api
from opentelemetry.baggage.propagation import W3CBaggagePropagator

BAGGAGE_KEY = "accord.deadline"
BAGGAGE_METADATA = "baggage"
MAX_BAGGAGE_BYTES = 2048
# An inherited deadline further than this from now is absurd (a bad clock or a forged
# value), and ignored; one past by less than PAST is kept (the upstream's budget is spent).
FUTURE = 30 * 24 * 3600.0
PAST = 24 * 3600.0
_MILLIS = re.compile(r"[0-9]{1,15}")

# Unix time (seconds) at which the current budget ends; None: no ambient deadline.
_ambient: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "accord_deadline", default=None
)
_propagator = W3CBaggagePropagator()


@contextlib.contextmanager
def deadline(seconds: float | None = None, *, at: float | None = None) -> Iterator[float]:
    """Bound every Accord call inside by seconds from now, or by Unix time at (exactly
    one of them); the earlier of it and any deadline already set counts. Yields the
    deadline in force (Unix seconds)."""
    if (seconds is None) == (at is None):
        raise ValueError("give either seconds or at")
    end = time.time() + seconds if seconds is not None else at
    assert end is not None
    if math.isnan(end):
        raise ValueError("a deadline must be a number")
    with _bounded(end) as effective:
        yield effective


@contextlib.contextmanager
def deadline_from(source: object) -> Iterator[float | None]:
    """Inherit what is left of an upstream's budget: the ``accord.deadline`` baggage
    member recorded with what source carries (an event, a key's provenance, a
    TraceContext, or a raw baggage header), capped by any deadline already set. Without
    one, or with one malformed or absurd, nothing changes. Yields the deadline in force
    (None when there is none)."""
    end = inherited(source)
    if end is None:
        yield _ambient.get()
        return
    with _bounded(end) as effective:
        yield effective


@contextlib.contextmanager
def unbounded() -> Iterator[None]:
    """The code inside is not bounded by the ambient deadline (giving back, cleanup)."""
    token = _ambient.set(None)
    try:
        yield
    finally:
        _ambient.reset(token)


@contextlib.contextmanager
def _bounded(end: float) -> Iterator[float]:
    current = _ambient.get()
    effective = end if current is None else min(current, end)
    token = _ambient.set(effective)
    try:
        yield effective
    finally:
        _ambient.reset(token)


def current() -> float | None:
    """The ambient deadline (Unix seconds), or None."""
    return _ambient.get()


def remaining() -> float | None:
    """Seconds left of the ambient deadline (<= 0: spent), or None when none is set."""
    end = _ambient.get()
    return None if end is None else end - time.time()


def cap(timeout: float) -> float:
    """A call's timeout bounded by the ambient deadline (may be <= 0: spent)."""
    end = _ambient.get()
    return timeout if end is None else min(timeout, end - time.time())


def detached() -> contextvars.Context:
    """A copy of the current context without the ambient deadline: for the client's
    background tasks, which outlive the call that started them."""
    context = contextvars.copy_context()
    context.run(_ambient.set, None)
    return context


def otel_context() -> otel_context_api.Context:
    """The current OpenTelemetry context, with baggage member accord.deadline (Unix ms)
    added while an ambient deadline is set: what a call's metadata is written from
    (client/propagation.py), so the member merges with any baggage already there."""
    end = _ambient.get()
    if end is None:
        return otel_context_api.get_current()
    return otel_baggage.set_baggage(BAGGAGE_KEY, str(max(0, int(end * 1000))))


def inherited(source: object) -> float | None:
    """The accord.deadline (Unix seconds) that source carries, if well formed and sane."""
    header = _baggage_of(source)
    if not header or len(header.encode()) > MAX_BAGGAGE_BYTES:
        return None
    found = otel_baggage.get_baggage(
        BAGGAGE_KEY, _propagator.extract({BAGGAGE_METADATA: header})
    )
    if not isinstance(found, str) or not _MILLIS.fullmatch(found):
        return None
    end = int(found) / 1000
    now = time.time()
    if not now - PAST <= end <= now + FUTURE:
        return None
    return end


def _baggage_of(source: object) -> str | None:
    """The baggage header a source carries: itself when a string; else its baggage, or
    that of its trace_context, written_by (provenance) or kv, looked up a few levels."""
    for _ in range(4):
        if isinstance(source, str):
            return source
        if source is None:
            return None
        found = getattr(source, "baggage", None)
        if isinstance(found, str):
            return found
        source = next(
            (
                getattr(source, name)
                for name in ("trace_context", "written_by", "kv")
                if getattr(source, name, None) is not None
            ),
            None,
        )
    return None
