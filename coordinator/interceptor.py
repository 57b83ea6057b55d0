"""The one server interceptor: identity, deadline, error mapping and the access log.

For every accord.* call it reads the namespace and agent from metadata (authentication
will live here too), records the caller's deadline for the etcd layer, turns domain
errors into gRPC statuses with details, and logs the call. Health and reflection calls
pass through untouched.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from accord.coordinator import logs
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import AccordError, Internal

_log = logs.get("accord.access")
SLOW_CALL_SECONDS = 1.0
# Trace ids for calls that bring none: unique per process, cheap to make.
_TRACE_PREFIX = f"{os.getpid():x}-{int(time.time()):x}-"
_trace_counter = itertools.count()


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        # Wrapped once per method, not once per call.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith("/accord."):
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    @staticmethod
    def _wrap(
        method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _begin(context: grpc.aio.ServicerContext[Any, Any]) -> calls.Call:
    metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    namespace, agent = calls.identity_from_metadata(metadata)
    remaining = context.time_remaining()
    deadline = time.monotonic() + remaining if remaining is not None else None
    trace = metadata.get(calls.TRACE_METADATA) or f"{_TRACE_PREFIX}{next(_trace_counter)}"
    return calls.Call(namespace=namespace, agent_id=agent, trace_id=trace, deadline=deadline)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: AccordError) -> None:
    status = rpc_status.to_status(error.to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)


def _finish(
    method: str,
    call: calls.Call | None,
    request: Any,
    started: float,
    error: AccordError | None,
    streaming: bool = False,
) -> None:
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    slow = latency_ms >= SLOW_CALL_SECONDS * 1000 and not streaming  # streams live long
    if error is None and not slow and not _log.is_enabled_for(10):
        return  # the common case: a quick success with debug logging off
    fields = {
        "method": method,
        "namespace": call.namespace if call else None,
        "agent_id": call.agent_id if call else None,
        "trace_id": call.trace_id if call else None,
        "request_id": getattr(request, "request_id", "") or None,
        "latency_ms": latency_ms,
    }
    if error is not None:
        level = _log.warning if isinstance(error, Internal) else _log.info
        level(
            "call failed", code=error.code.name, reason=error.reason, error=error.message, **fields
        )
    elif slow:
        _log.info("slow call", **fields)
    else:
        _log.debug("call", **fields)


def _unary(method: str, behavior: Any) -> Any:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        call: calls.Call | None = None
        error: AccordError | None = None
        try:
            call = _begin(context)
            token = calls.current.set(call)
            try:
                return await behavior(request, context)
            finally:
                calls.current.reset(token)
        except AccordError as exc:
            error = exc
        except Exception as exc:
            _log.exception("unexpected error", method=method)
            error = Internal(f"unexpected coordinator error: {type(exc).__name__}")
        finally:
            _finish(method, call, request, started, error)
        await _abort(context, error)

    return wrapped


def _stream(method: str, behavior: Any) -> Any:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        call: calls.Call | None = None
        error: AccordError | None = None
        try:
            call = _begin(context)
            token = calls.current.set(call)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                calls.current.reset(token)
        except AccordError as exc:
            error = exc
        except Exception as exc:
            _log.exception("unexpected error", method=method)
            error = Internal(f"unexpected coordinator error: {type(exc).__name__}")
        finally:
            _finish(method, call, request, started, error, streaming=True)
        if error is not None:
            await _abort(context, error)

    return wrapped
