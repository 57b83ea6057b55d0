"""OpenTelemetry traces of a replica: a server span per RPC and per y-websocket
connection, a child span per etcd call made on a traced call's behalf, and a span per
group-commit batch that links to the spans of the writes in it; exported over OTLP.

Off unless the standard `OTEL_*` environment asks for it: `OTEL_TRACES_EXPORTER` (other
than `none`), or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true` turns it off whatever
else is set. Off, nothing here runs on a call: the interceptor wraps no method, etcd and
group commit test one attribute (`STATE.tracer is None`). On, the SDK reads its own
settings: the exporter (the OTLP/HTTP exporter reads `OTEL_EXPORTER_OTLP_*`: endpoint,
headers, timeout, compression), the batch processor (`OTEL_BSP_*`), the sampler
(`OTEL_TRACES_SAMPLER`), span limits and resource attributes. `otlp` means OTLP over
HTTP/protobuf, the exporter installed with Accord, unless `OTEL_EXPORTER_OTLP_PROTOCOL`
says grpc (then its package must be installed). The resource is `service.name=accord`
(unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one) and
`service.instance.id=<replica name>`. Spans still queued are flushed on shutdown.

A call's parent is the W3C context of its metadata (`traceparent`, `tracestate`,
`baggage`): untrusted input, bounded before the W3C propagators parse it (a traceparent
longer than 55 characters, a tracestate over 512 bytes or baggage over 2048 bytes is
dropped, as is anything the propagators reject); the call then starts a new trace.

Error handling: configuration the SDK cannot use (an exporter not installed, an unknown
name) is logged and leaves tracing off; nothing here fails a call. A span's status is
ERROR only for the codes a server owns (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
INTERNAL, UNAVAILABLE, DATA_LOSS, as OpenTelemetry's RPC conventions say for servers); a
refusal of the caller's request (a failed compare, bad input, a missing permission, a
quota) is the caller's outcome and leaves the status unset, with its code recorded.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from accord.coordinator import logs
from accord.coordinator.substrate import calls

_log = logs.get("accord.tracing")


class _Tracing:
    """This process's tracer once configure() found traces asked for (None: off)."""

    __slots__ = ("provider", "tracer")

    def __init__(self) -> None:
        self.tracer: Tracer | None = None
        self.provider: TracerProvider | None = None


STATE = _Tracing()

_W3C = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
# The longest value of each W3C key a caller may send; longer ones are dropped.
BOUNDS = {"traceparent": 55, "tracestate": 512, "baggage": 2048}
# Codes a server owns (OpenTelemetry RPC conventions, server side): the span is an ERROR.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def asked(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for, by entry point name ([]: off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        names = "otlp" if endpoint else "none"
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    otlp = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    chosen = [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]
    return [otlp if name == "otlp" else name for name in chosen]


def configure(replica: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Set up export for this process when the environment asks for it; whether it did."""
    exporters = [e for e in (_exporter(name) for name in asked(environ)) if e is not None]
    if not exporters:
        return False
    attributes: dict[str, str] = {"service.instance.id": replica}
    named = "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not environ.get("OTEL_SERVICE_NAME") and not named:
        attributes["service.name"] = "accord"
    # The SDK merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME beneath these.
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # reads OTEL_BSP_*
    trace.set_tracer_provider(provider)
    STATE.provider = provider
    STATE.tracer = provider.get_tracer("accord.coordinator")
    _log.info("traces exported", exporters=asked(environ), replica=replica)
    return True


def shutdown() -> None:
    """Export what is still queued (bounded by the exporter's timeout), then stop."""
    if STATE.provider is not None:
        STATE.provider.shutdown()
    STATE.tracer = STATE.provider = None


def _exporter(name: str) -> SpanExporter | None:
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        _log.error("trace exporter not installed: traces are off", exporter=name)
        return None
    try:
        made = next(iter(found)).load()()
    except Exception as exc:
        _log.error("trace exporter failed to start: traces are off", exporter=name, error=str(exc))
        return None
    return made if isinstance(made, SpanExporter) else None


def extract(metadata: Iterable[tuple[str, Any]]) -> Context:
    """The caller's W3C context from gRPC metadata (or URL parameters), each key taken once
    and within its bound; an empty Context when there is none worth trusting."""
    carrier: dict[str, str] = {}
    for key, value in metadata:
        bound = BOUNDS.get(key)
        if bound is not None and isinstance(value, str):
            if key in carrier or len(value.encode()) > bound:
                carrier[key] = ""  # given twice, or too long: dropped
            else:
                carrier[key] = value
    if not carrier.get("traceparent") and not carrier.get("baggage"):
        return Context()
    return _W3C.extract({k: v for k, v in carrier.items() if v}, context=Context())


class MethodSpans:
    """The server spans of one gRPC method: its name and fixed attributes, made once."""

    __slots__ = ("attributes", "name", "tracer")

    def __init__(self, method: str, tracer: Tracer) -> None:
        service, _, name = method.lstrip("/").partition("/")
        self.name = f"{service}/{name}"
        self.tracer = tracer
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    def start(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Span, object]:
        """The call's span, made current (the token to end() it with)."""
        span = self.tracer.start_span(
            self.name,
            context=extract(context.invocation_metadata() or ()),
            kind=SpanKind.SERVER,
            attributes=self.attributes,
        )
        _peer(span, context.peer() or "")
        return span, attach(trace.set_span_in_context(span))

    def end(
        self,
        span: Span,
        token: object,
        context: grpc.aio.ServicerContext[Any, Any],
        code: grpc.StatusCode | None,
    ) -> None:
        """Leave the span's context now; end it with code, or, when the handler returned,
        once gRPC has sent the status (a client that went away may end a stream's
        requests first, so only then is the call known to be cancelled)."""
        detach(token)  # type: ignore[arg-type]
        if code is not None:
            _ended(span, code)
        else:
            # The stubs type the callback as a class of their own; any callable works.
            context.add_done_callback(lambda _: _ended(span, _code(context)))  # type: ignore[arg-type]


def _ended(span: Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def identify(call: calls.Call) -> None:
    """Name the caller on the current server span, once identified (and authorized)."""
    span = trace.get_current_span()
    span.set_attribute("accord.namespace", call.namespace)
    if call.agent_id:
        span.set_attribute("accord.agent_id", call.agent_id)


def _peer(span: Span, peer: str) -> None:
    """network.peer.* from gRPC's peer string (ipv4:1.2.3.4:5, ipv6:[::1]:5)."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = address.rpartition(":")
        span.set_attribute("network.peer.address", host.strip("[]"))
        if port.isdigit():
            span.set_attribute("network.peer.port", int(port))


def _code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status the interceptor set on the call (OK when it set none), or CANCELLED
    when the client went away (a stream may see its requests end and return normally)."""
    if context.cancelled():
        return grpc.StatusCode.CANCELLED
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return _CODES.get(code, grpc.StatusCode.OK) if isinstance(code, int) else grpc.StatusCode.OK


Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def unary(spans: MethodSpans, handler: Unary) -> Unary:
    """handler inside a server span."""

    async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        span, token = spans.start(context)
        code = None
        try:
            return await handler(request, context)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            spans.end(span, token, context, code)

    return traced


def streaming(spans: MethodSpans, handler: Streaming) -> Streaming:
    """handler (server-streaming or stream-stream) inside a server span that lasts as long
    as the stream; the request iterator is read inside it too."""

    async def traced(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        span, token = spans.start(context)
        code = None
        try:
            async for response in handler(request, context):
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            spans.end(span, token, context, code)

    return traced


@contextmanager
def etcd_span(name: str) -> Iterator[None]:
    """A child span for one etcd call, when made on behalf of a recorded span."""
    parent = trace.get_current_span()
    if STATE.tracer is None or not parent.is_recording():
        yield
        return
    with STATE.tracer.start_as_current_span(
        f"etcd {name}",
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": "etcdserverpb", "rpc.method": name},
    ):
        yield


def current_link() -> SpanContext | None:
    """The current span's context, to link to from work done later on its behalf."""
    if STATE.tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextmanager
def batch_span(links: list[SpanContext | None], writes: int) -> Iterator[None]:
    """The span of one group-commit batch (None: nothing to record): a child of its one
    write's span when alone, else the root of its own trace, linked to each write's span
    (the batch serves all of them and runs in none's context)."""
    linked = [link for link in links if link is not None]
    if STATE.tracer is None or not linked:
        yield
        return
    parent = trace.set_span_in_context(trace.NonRecordingSpan(linked[0])) if writes == 1 else None
    with STATE.tracer.start_as_current_span(
        "accord.group_commit",
        context=parent or Context(),
        kind=SpanKind.INTERNAL,
        links=[Link(link) for link in linked],
        attributes={"accord.batch.writes": writes},
    ):
        yield


@contextmanager
def connection_span(path: str, query: Iterable[tuple[str, str]]) -> Iterator[None]:
    """The span of one y-websocket connection, parented to the W3C context of its URL
    parameters (traceparent, tracestate)."""
    if STATE.tracer is None:
        yield
        return
    with STATE.tracer.start_as_current_span(
        "accord.y-websocket",
        context=extract(query),
        kind=SpanKind.SERVER,
        attributes={"url.path": path.partition("?")[0][:256]},
    ):
        yield
