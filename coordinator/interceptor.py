"""The one server interceptor: identity, deadline, error mapping, the access log and,
when traces are exported, a server span per call (observability/tracing.py).

For every accord.* call it reads the namespace and agent from metadata and, with auth
required, the bearer token (or, under mutual TLS and without a token, the verified
client certificate's CN): the token must name a principal (auth.cache), the agent id
must be one that principal may act as, and the principal must hold the role the method
needs in the namespace (auth.roles). It records the caller's deadline for the etcd
layer, turns domain errors into gRPC statuses with details, and logs the call; it counts
calls in flight, and each authorized call in its namespace, for `accord status`. Health
and reflection calls pass through untouched. Requests are decoded by decoding.tolerant,
so undecodable bytes reach the method as InvalidArgument, not as gRPC's UNKNOWN.

Error handling: identity metadata given twice, or in a -bin form, is BadIdentity
(INVALID_ARGUMENT), with auth on or off. With auth required: no token, or a malformed,
unknown, expired or revoked one is Unauthenticated; an agent id the principal may not
use, or a missing role, is PermissionDenied. Each is raised before the method runs, so
a refused call changes nothing. A refusal for a request rate is answered when the caller
may come back (at most a second later, and before its deadline: quotas/tarpit.py), so a
caller ignoring RetryInfo is paced by the replica. An open stream ends with Unauthenticated
when its token is revoked or expires, and with PermissionDenied when its role is taken
back.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
from grpc_status import rpc_status

from accord.coordinator import decoding, logs
from accord.coordinator.auth import roles, streams, tokens
from accord.coordinator.auth.cache import AuthCache, Verified
from accord.coordinator.auth.refusals import RefusalLog
from accord.coordinator.observability import metrics, metrics_calls, trace_context, tracing
from accord.coordinator.observability.status import CallLoad
from accord.coordinator.quotas.admission import Admission
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    AccordError,
    Internal,
    QuotaExceeded,
    RateExceeded,
    Unauthenticated,
)
from accord.v1 import records_pb2

_log = logs.get("accord.access")
SLOW_CALL_SECONDS = 1.0
# Trace ids for calls that bring none: unique per process, cheap to make.
_TRACE_PREFIX = f"{os.getpid():x}-{int(time.time()):x}-"
_trace_counter = itertools.count()
_AUTHORIZATION_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        auth: AuthCache | None = None,
        *,
        client_certificates: bool = False,
        refusals: RefusalLog | None = None,
        admission: Admission | None = None,
        load: CallLoad | None = None,
    ) -> None:
        """auth: the credentials to check every call against; None: auth is off.
        client_certificates: the port requires them (mutual TLS), so a call without a
        token may be identified by its certificate. refusals: where calls refused on
        authorization grounds are logged (the audit log). admission: the namespace
        quotas (None: no quotas). load: where calls in flight and per namespace are
        counted (`accord status`)."""
        self._auth = auth
        self._client_certificates = client_certificates
        self._refusals = refusals
        self._admission = admission
        self.load = load or CallLoad()
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

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        gate = _Gate(
            method,
            self._auth,
            self._client_certificates,
            self._refusals,
            self._admission,
            self.load,
        )
        decode = decoding.tolerant(method, handler.request_deserializer)
        measured = metrics.enabled()  # off: not wrapped, so no cost per call
        # A server span around the whole call when traces are exported (none otherwise).
        tracer = tracing.STATE.tracer
        spans = None if tracer is None else tracing.MethodSpans(method, tracer)
        if handler.unary_unary:
            unary = _unary(gate, decoding.checked(handler.unary_unary))
            unary = metrics_calls.measured_unary(method, unary) if measured else unary
            return grpc.unary_unary_rpc_method_handler(
                unary if spans is None else tracing.unary(spans, unary),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            stream = _stream(gate, decoding.checked_stream(handler.unary_stream))
            if measured:
                stream = metrics_calls.measured_stream(method, metrics_calls.SERVER_STREAM, stream)
            return grpc.unary_stream_rpc_method_handler(
                stream if spans is None else tracing.streaming(spans, stream),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            bidi = _stream(gate, decoding.checked_requests(handler.stream_stream))
            if measured:
                bidi = metrics_calls.measured_stream(method, metrics_calls.BIDI_STREAM, bidi)
            return grpc.stream_stream_rpc_method_handler(
                bidi if spans is None else tracing.streaming(spans, bidi),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        return handler


class _Gate:
    """Who may call one method: its name, what it needs, and the credentials (None: auth
    off)."""

    __slots__ = (
        "admission",
        "auth",
        "certificates",
        "load",
        "method",
        "need",
        "refusals",
        "rule",
    )

    def __init__(
        self,
        method: str,
        auth: AuthCache | None,
        certificates: bool,
        refusals: RefusalLog | None = None,
        admission: Admission | None = None,
        load: CallLoad | None = None,
    ) -> None:
        self.method = method
        self.auth = auth
        self.certificates = certificates
        self.refusals = refusals
        self.need = roles.REQUIRED.get(method)
        self.admission = admission
        self.rule = admission.rule(method) if admission is not None else None
        self.load = load or CallLoad()  # where its calls are counted (`accord status`)

    def refused(self, call: calls.Call, error: AccordError) -> None:
        """Log a refusal on authorization grounds in the audit log (rate-limited), and
        count it (and a quota's) in the metrics."""
        if self.refusals is not None and error.code in _AUTHORIZATION_CODES:
            self.refusals.note(call, self.method, error)
        metrics_calls.refused(call, error)

    async def begin(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[calls.Call, Verified | None]:
        """The call, identified and (with auth required) authorized, and the credential
        it was authorized by (None: auth off); sets calls.current."""
        metadata = calls.single_metadata(context.invocation_metadata() or ())
        namespace, agent = calls.identity_from_metadata(metadata)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        trace = metadata.get(calls.TRACE_METADATA) or f"{_TRACE_PREFIX}{next(_trace_counter)}"
        traced = trace_context.from_metadata(metadata)  # recorded with what the call writes
        call = calls.Call(namespace, agent, trace, deadline, trace_context=traced)
        calls.current.set(call)  # a token lookup in etcd is bounded by the caller's deadline
        if self.auth is None:
            return call, None
        call = replace(call, peer=context.peer() or "")
        calls.current.set(call)  # a refusal below is audited with the caller's address
        certified = _certificate_name(context) if self.certificates else None
        if certified is not None and calls.AUTHORIZATION_METADATA not in metadata:
            verified = await self.auth.verify_certificate(certified)
        else:
            verified = await self.auth.verify(tokens.parse(_bearer(metadata)))
        principal = verified.principal
        held = roles.granted(principal, namespace)
        call = replace(
            call,
            agent_id=agent or roles.default_agent(principal),
            principal=principal.name,
            token_id=verified.token_id,
            namespace_admin=roles.ADMIN in held,
            roles=held,
            agents=frozenset(roles.agents_of(principal)),
            labels=principal.labels[namespace].labels if namespace in principal.labels else {},
        )
        calls.current.set(call)
        self.recheck(call, principal)
        return call, verified

    def recheck(self, call: calls.Call, principal: records_pb2.PrincipalRecord) -> None:
        """Refuse unless principal may make this call (again: for an open stream, each
        time the principal changes)."""
        roles.check_agent(principal, call.agent_id)
        roles.authorize(principal, self.method, self.need, call.namespace)

    async def guard(
        self, responses: AsyncIterator[Any], call: calls.Call, verified: Verified
    ) -> AsyncIterator[Any]:
        """responses, ended as soon as the credential stops allowing the stream."""
        assert self.auth is not None
        revocation = self.auth.follow(verified, lambda p: self.recheck(call, p))
        try:
            async for response in streams.until_ended(
                responses, revocation.ended, verified.expires_at
            ):
                yield response
        finally:
            self.auth.forget(revocation)

    async def counted(self, responses: AsyncIterator[Any], call: calls.Call) -> AsyncIterator[Any]:
        """responses, once the namespace's stream quota and rate admit the stream, counted
        as open until it ends."""
        assert self.admission is not None and self.rule is not None
        self.admission.open_stream(self.rule, call)
        try:
            async for response in responses:
                yield response
        finally:
            self.admission.close_stream(self.rule, call)


def _certificate_name(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The CN of the client certificate the TLS handshake verified (mutual TLS only: the
    replica requests certificates only when it has a client CA, and gRPC refuses an
    unverified one before any call)."""
    names = list(context.auth_context().get("x509_common_name", ()))
    return names[0].decode() if names else None


def _bearer(metadata: dict[str, str]) -> str:
    """The token of an `authorization: Bearer <token>` entry."""
    value = metadata.get(calls.AUTHORIZATION_METADATA)
    if value is None:
        raise Unauthenticated(
            "this replica requires a credential: send metadata `authorization: Bearer "
            "<token>` (the Python client: token= or ACCORD_TOKEN)",
            metadata={"token": "missing"},
        )
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the authorization metadata must read `Bearer <token>`",
            metadata={"token": "malformed"},
        )
    return token.strip()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: AccordError) -> None:
    status = rpc_status.to_status(error.to_status())
    # The caller's frame holds the error, whose traceback (and chained errors') holds that
    # frame and the request: cut the cycle, so a refused request is freed at once, not
    # whenever a full collection runs.
    error.__traceback__ = error.__context__ = error.__cause__ = None
    # Not context.abort(): its exception, kept by the call's state, holds this frame's
    # caller (and so the request and the context) in another cycle. The status set here
    # is sent when the method returns; a unary method returns no message.
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


async def _held(gate: _Gate, refusal: RateExceeded, call: calls.Call | None) -> RateExceeded:
    """A rate refusal, answered after the tarpit held it (quotas/tarpit.py): a caller
    retrying at once is paced by the replica instead of costing it a call per retry."""
    if gate.admission is None or call is None:
        return refusal
    return await gate.admission.tarpit.answer(refusal, call.namespace, call.deadline)


def _finish(
    method: str,
    call: calls.Call | None,
    request: Any,
    started: float,
    error: AccordError | None,
    streaming: bool = False,
) -> None:
    if call is not None and tracing.STATE.tracer is not None:
        tracing.identify(call)
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    slow = latency_ms >= SLOW_CALL_SECONDS * 1000 and not streaming  # streams live long
    if error is None and not slow and not logs.debug_enabled():
        return  # the common case: a quick success with debug logging off
    if isinstance(error, QuotaExceeded) and not logs.debug_enabled():
        return  # pushback is routine under load: a line per refusal would add to it
    fields = {
        "method": method,
        "namespace": call.namespace if call else None,
        "agent_id": call.agent_id if call else None,
        "principal": call.principal if call and call.principal else None,
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


def _unary(gate: _Gate, behavior: Any) -> Any:
    method = gate.method

    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        call: calls.Call | None = None
        error: AccordError | None = None
        load = gate.load
        load.in_flight += 1
        try:
            token = calls.current.set(calls.BACKGROUND)
            try:
                call, _ = await gate.begin(context)
                load.counted(call.namespace)
                if gate.admission is not None and gate.rule is not None:  # quotas, rate
                    gate.admission.admit(gate.rule, call, request)
                return await behavior(request, context)
            except AccordError as exc:
                gate.refused(calls.current.get(), exc)
                raise
            finally:
                calls.current.reset(token)
        except AccordError as exc:
            error = exc
        except Exception as exc:
            _log.exception("unexpected error", method=method)
            error = Internal(f"unexpected coordinator error: {type(exc).__name__}")
        finally:
            load.in_flight -= 1
            _finish(method, call, request, started, error)
        if isinstance(error, RateExceeded):
            del request  # held, the refusal keeps nothing of the request
            error = await _held(gate, error, call)
        await _abort(context, error)

    return wrapped


def _stream(gate: _Gate, behavior: Any) -> Any:
    method = gate.method

    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        call: calls.Call | None = None
        error: AccordError | None = None
        load = gate.load
        load.in_flight += 1
        load.streams += 1
        try:
            token = calls.current.set(calls.BACKGROUND)
            try:
                call, verified = await gate.begin(context)
                load.counted(call.namespace)
                responses = behavior(request, context)
                if verified is not None:  # ends when the credential no longer allows it
                    responses = gate.guard(responses, call, verified)
                if gate.admission is not None:  # admitted, and counted while open
                    responses = gate.counted(responses, call)
                async for response in responses:
                    yield response
            except AccordError as exc:
                gate.refused(calls.current.get(), exc)
                raise
            finally:
                _restore(token)
        except AccordError as exc:
            error = exc
        except Exception as exc:
            _log.exception("unexpected error", method=method)
            error = Internal(f"unexpected coordinator error: {type(exc).__name__}")
        finally:
            load.in_flight -= 1
            load.streams -= 1
            _finish(method, call, request, started, error, streaming=True)
        if isinstance(error, RateExceeded):
            del request
            error = await _held(gate, error, call)
        if error is not None:
            await _abort(context, error)

    return wrapped


def _restore(token: contextvars.Token[calls.Call]) -> None:
    """Put back the call context a stream's handler set. A stream whose client left while
    its handler was suspended at a `yield` (a reset connection) is closed later by the
    event loop, in another context: there is nothing to put back there, and resetting
    would raise ValueError in place of the GeneratorExit that ends the handler."""
    with contextlib.suppress(ValueError):
        calls.current.reset(token)
