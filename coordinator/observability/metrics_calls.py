"""The gRPC server metrics of each accord.* call, measured around the interceptor's own
wrapper (interceptor.py): started, handled by code, handling seconds, messages received
and sent, and so the calls in flight; and the auth and quota refusals of calls and of
batch operations.

A method's counts (metrics.MethodCounts) are made once, when the interceptor first wraps
the method; a call then costs a few integer increments and a bisect, on the event loop's
thread, with no lock (a scrape reads them from its own thread). With metrics off the
interceptor does not wrap at all (measured_*() is never called), so a replica nobody
scrapes pays nothing per call. A unary call counts one message received, and one sent
when it succeeds; a server stream counts each message it sends; a stream-stream call also
each request it reads.

The code a call is counted under is the status it ends with: the one the interceptor
set for a refusal or an error, OK otherwise; a call the client cancelled (or whose
deadline passed) while it ran is Canceled (or DeadlineExceeded). A stream whose method
returned is counted once gRPC has sent its status (a done callback): a client that went
away may end a stream-stream call's requests first, and only then is it known cancelled.

Error handling: nothing here raises; measuring never changes what a call does or sends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from accord.coordinator.observability import metrics
from accord.coordinator.observability.metrics import (
    AUTH_REFUSALS,
    BIDI_STREAM,
    CODE_LABELS,
    GRPC_SERVER,
    QUOTA_REFUSALS,
    SERVER_STREAM,
    UNARY,
    MethodCounts,
    namespace_label,
)
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    AccordError,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)

__all__ = ["BIDI_STREAM", "SERVER_STREAM", "measured_stream", "measured_unary", "refused"]
_OK = grpc.StatusCode.OK


def _counts(method: str, grpc_type: str) -> MethodCounts:
    service, _, name = method.lstrip("/").partition("/")
    return GRPC_SERVER.method(grpc_type, service, name)


def _end(counts: MethodCounts, code: grpc.StatusCode, started: float) -> None:
    counts.handled[code] = counts.handled.get(code, 0) + 1
    counts.observe(time.perf_counter() - started)


def _ended(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code of a call that ended by an exception (its task cancelled): the deadline's,
    if it has passed, else the client's cancel."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def measured_unary(method: str, behavior: Any) -> Any:
    """behavior (the interceptor's unary wrapper), measured (its message received is
    its start, its message sent its OK: metrics.GrpcServerMetrics)."""
    counts = _counts(method, UNARY)

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        counts.started += 1
        started = time.perf_counter()
        code = None
        try:
            response = await behavior(request, context)
            code = context.code() or _OK
            return response
        finally:
            _end(counts, code or _ended(context), started)

    return run


def measured_stream(method: str, grpc_type: str, behavior: Any) -> Any:
    """behavior (the interceptor's streaming wrapper), measured: each response sent, and
    for a stream-stream call each request read."""
    counts = _counts(method, grpc_type)
    reads_stream = grpc_type == BIDI_STREAM

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        counts.started += 1
        started = time.perf_counter()
        if reads_stream:
            request = _counted(request, counts)
        else:
            counts.received += 1
        returned = False
        try:
            async with aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    counts.sent += 1
                    yield response
            returned = True
        finally:
            if returned:  # a client that left may have ended the requests: see _final
                context.add_done_callback(lambda _: _end(counts, _final(context), started))  # type: ignore[arg-type]
            else:
                _end(counts, _ended(context), started)

    return run


def _final(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status of a stream whose method returned, once gRPC has sent it: the one the
    interceptor set, OK if none, or CANCELLED if the client went away (its requests
    ended, and the method returned normally)."""
    if context.cancelled():
        return grpc.StatusCode.CANCELLED
    return context.code() or _OK


async def _counted(requests: AsyncIterator[Any], counts: MethodCounts) -> AsyncIterator[Any]:
    async for request in requests:
        counts.received += 1
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
