"""The client's outgoing trace context (accord.client.propagation): the W3C metadata of
the current span and baggage, and nothing at all without them. The end-to-end check (a
replica's span parented to the client's) is tests/service/test_tracing.py."""

from __future__ import annotations

from opentelemetry import baggage
from opentelemetry.context import attach, detach
from opentelemetry.sdk.trace import TracerProvider

from accord.client.propagation import outgoing

IDENTITY = (("accord-namespace", "ns"), ("accord-agent-id", "a"))


def test_no_span_no_baggage_sends_identity_only() -> None:
    assert outgoing(IDENTITY) is IDENTITY


def test_current_span_is_sent_as_traceparent() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("agent") as span:
        sent = dict(outgoing(IDENTITY))
    ids = span.get_span_context()
    assert sent["accord-namespace"] == "ns"
    assert sent["traceparent"] == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}"


def test_baggage_alone_is_sent() -> None:
    token = attach(baggage.set_baggage("accord.deadline", "1700000000000"))
    try:
        sent = dict(outgoing(IDENTITY))
    finally:
        detach(token)
    assert sent["baggage"] == "accord.deadline=1700000000000"
    assert "traceparent" not in sent
