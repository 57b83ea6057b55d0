"""The gRPC server metrics of each accord.* call, measured around the interceptor's own
wrapper (interceptor.py): started, handled by code, handling seconds, messages received
and sent, and the calls in flight; and the auth and quota refusals of calls and of batch
operations.

A method's label children are bound once, when the interceptor first wraps the method;
a call then costs a few increments and one histogram observation. With metrics off the
interceptor does not wrap at all (measured() is never called), so a replica nobody
scrapes pays nothing per call. A unary call counts one message each way (none sent when
it fails); a server stream counts each message it sends; a stream-stream call also each
request it reads.

The code a call is counted under is the status it ends with: the one the interceptor
set for a refusal or an error, OK otherwise; a call the client cancelled (or whose
deadline passed) while it ran is Canceled (or DeadlineExceeded).

Error handling: nothing here raises; measuring never changes what a call does or sends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from prometheus_client import Counter

from accord.coordinator.observability import metrics
from accord.coordinator.observability.metrics import (
    AUTH_REFUSALS,
    CODE_LABELS,
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_MSG_RECEIVED,
    GRPC_MSG_SENT,
    GRPC_STARTED,
    INFLIGHT_CALLS,
    QUOTA_REFUSALS,
    namespace_label,
)
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    AccordError,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)

UNARY = "unary"
SERVER_STREAM = "server_stream"
BIDI_STREAM = "bidi_stream"
_OK = grpc.StatusCode.OK


class MethodMetrics:
    """One method's label children, bound once."""

    __slots__ = ("_handled", "handling", "labels", "received", "sent", "started")

    def __init__(self, method: str, grpc_type: str) -> None:
        service, _, name = method.lstrip("/").partition("/")
        self.labels = (grpc_type, service, name)
        self.started = GRPC_STARTED.labels(*self.labels)
        self.received = GRPC_MSG_RECEIVED.labels(*self.labels)
        self.sent = GRPC_MSG_SENT.labels(*self.labels)
        self.handling = GRPC_HANDLING_SECONDS.labels(*self.labels)
        self._handled: dict[grpc.StatusCode, Counter] = {}  # bound at a code's first use

    def begin(self) -> float:
        self.started.inc()
        INFLIGHT_CALLS.inc()
        return time.perf_counter()

    def end(self, code: grpc.StatusCode, started: float) -> None:
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = GRPC_HANDLED.labels(
                *self.labels, CODE_LABELS.get(code, "Unknown")
            )
        handled.inc()
        self.handling.observe(time.perf_counter() - started)
        INFLIGHT_CALLS.dec()


def _ended(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code of a call that ended by an exception (its task cancelled): the deadline's,
    if it has passed, else the client's cancel."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def measured_unary(method: str, behavior: Any) -> Any:
    """behavior (the interceptor's unary wrapper), measured."""
    measure = MethodMetrics(method, UNARY)
    received, sent = measure.received, measure.sent

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = measure.begin()
        received.inc()
        code = None
        try:
            response = await behavior(request, context)
            code = context.code() or _OK
            if code is _OK:
                sent.inc()
            return response
        finally:
            measure.end(code or _ended(context), started)

    return run


def measured_stream(method: str, grpc_type: str, behavior: Any) -> Any:
    """behavior (the interceptor's streaming wrapper), measured: each response sent, and
    for a stream-stream call each request read."""
    measure = MethodMetrics(method, grpc_type)
    received, sent = measure.received, measure.sent
    reads_stream = grpc_type == BIDI_STREAM

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        started = measure.begin()
        if reads_stream:
            request = _counted(request, received)
        else:
            received.inc()
        code = None
        try:
            async with aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    sent.inc()
                    yield response
            code = context.code() or _OK
        finally:
            measure.end(code or _ended(context), started)

    return run


async def _counted(requests: AsyncIterator[Any], received: Counter) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield request


def refused(call: calls.Call, error: AccordError) -> None:
    """Count a refusal of a call or of a batch operation: on authorization grounds by its
    code alone; by a quota, by namespace (the caller was authorized in it) and limit."""
    if not metrics.enabled():
        return
    if isinstance(error, Unauthenticated | PermissionDenied):
        AUTH_REFUSALS.labels(CODE_LABELS[error.code]).inc()
    elif isinstance(error, QuotaExceeded):
        limit = error.metadata.get("limit", "")
        QUOTA_REFUSALS.labels(namespace_label(call.namespace), limit).inc()
