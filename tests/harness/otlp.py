"""A tiny OTLP/HTTP trace receiver in the test process: replicas export their spans to it
(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and tests read what arrived, decoded from
ExportTraceServiceRequest (opentelemetry-proto, installed with the exporter)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: int
    span_id: int
    parent_id: int  # 0: a root span
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[int, int]]  # (trace id, span id)
    status: int  # 0 unset, 1 ok, 2 error
    trace_state: str
    resource: dict[str, Any] = field(repr=False)


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    """Collects every span POSTed to /v1/traces on 127.0.0.1:port (0: a free port)."""

    def __init__(self, port: int = 0) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        lock = threading.Lock()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with lock:
                    received.requests += 1
                    for resource_spans in export.resource_spans:
                        resource = _attributes(resource_spans.resource.attributes)
                        for scope in resource_spans.scope_spans:
                            received.spans.extend(_span(s, resource) for s in scope.spans)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def env(self) -> dict[str, str]:
        """The environment that makes a replica export here, in batches every 100 ms."""
        return {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _span(span: Any, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        trace_id=int.from_bytes(span.trace_id, "big"),
        span_id=int.from_bytes(span.span_id, "big"),
        parent_id=int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else 0,
        kind=span.kind,
        attributes=_attributes(span.attributes),
        links=[
            (int.from_bytes(link.trace_id, "big"), int.from_bytes(link.span_id, "big"))
            for link in span.links
        ],
        status=span.status.code,
        trace_state=span.trace_state,
        resource=resource,
    )
