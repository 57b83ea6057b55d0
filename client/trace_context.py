"""The writer's trace context, as the agent that receives what it wrote sees it.

Accord records the W3C trace context of the call that wrote something (the `traceparent`,
`tracestate` and `baggage` the client sent) and hands it back with what another agent
receives: a watch event (`event.trace_context`, from `kv.written_by`), a session update
(`UpdateEvent.trace_context`), a lock grant after a hand-off (`Grant.handed_off_by`: the
release's) and a vote's decision (`DecisionEvent.trace_context`: the deciding ballot's).
link() and parent() turn it into what OpenTelemetry takes, so a reacting agent's span
names the span that set it off:

    with tracer.start_as_current_span("react", links=[accord.client.link(event)]):
        ...

A link is the model for "reacts to": the writer's trace ended when its call returned,
and one reaction may answer several writers. parent() makes the writer's span the
parent instead, for an agent that wants the reaction inside the writer's trace.

Error handling: nothing here raises on what the service sent: a context that OpenTelemetry
cannot parse gives an invalid span context (link() then links to nothing, and
OpenTelemetry drops such a link; parent() starts a new trace) and no baggage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from accord.v1 import common_pb2

_TRACE = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A writer's W3C trace context, as recorded by the service (bounded there: a
    traceparent, at most 512 bytes of tracestate, at most 2048 of baggage). Baggage may
    come alone (traceparent ""): an agent that set a deadline and does not trace."""

    traceparent: str
    tracestate: str = ""
    baggage: str = ""

    @staticmethod
    def _from(msg: common_pb2.TraceContext) -> TraceContext | None:
        if not msg.traceparent and not msg.baggage:  # baggage may come alone
            return None
        return TraceContext(msg.traceparent, msg.tracestate, msg.baggage)

    def carrier(self) -> dict[str, str]:
        """The headers as a W3C propagator reads them."""
        headers = {"traceparent": self.traceparent} if self.traceparent else {}
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        if self.baggage:
            headers["baggage"] = self.baggage
        return headers

    def context(self) -> Context:
        """An OpenTelemetry Context whose current span is the writer's (remote) span, with
        the writer's baggage."""
        carrier = self.carrier()
        return _BAGGAGE.extract(carrier, context=_TRACE.extract(carrier))

    def span_context(self) -> trace.SpanContext:
        """The writer's span (invalid if the recorded traceparent does not parse)."""
        return trace.get_current_span(self.context()).get_span_context()

    def baggage_items(self) -> dict[str, str]:
        """The writer's baggage, decoded (e.g. "accord.deadline": its budget's end, in Unix
        ms)."""
        return {k: str(v) for k, v in otel_baggage.get_all(self.context()).items()}


class Traced(Protocol):
    """Anything that carries a writer's trace context (an event, a grant, a decision)."""

    @property
    def trace_context(self) -> TraceContext | None: ...


def _context_of(source: TraceContext | Traced | None) -> TraceContext | None:
    if source is None or isinstance(source, TraceContext):
        return source
    return source.trace_context


def link(source: TraceContext | Traced | None) -> trace.Link:
    """A link to the writer's span, for `start_as_current_span(..., links=[...])`. With
    no recorded context the link's span context is invalid, and OpenTelemetry drops it."""
    context = _context_of(source)
    if context is None:
        return trace.Link(trace.INVALID_SPAN_CONTEXT)
    return trace.Link(context.span_context())


def parent(source: TraceContext | Traced | None) -> Context:
    """A Context to start a span in (`start_as_current_span(..., context=parent(e))`) as a
    child of the writer's span, with its baggage; an empty Context when none was
    recorded (a new trace)."""
    context = _context_of(source)
    return context.context() if context is not None else Context()
