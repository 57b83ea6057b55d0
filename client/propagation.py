"""The caller's OpenTelemetry context on every call: W3C `traceparent`, `tracestate` and
`baggage` gRPC metadata, written by the propagators OpenTelemetry is configured with
(`OTEL_PROPAGATORS`, by default W3C trace context and baggage).

Only the OpenTelemetry API is used, so an agent without an SDK pays a context lookup per
call: with no valid current span and no baggage nothing is injected at all. A call sent
on behalf of a queued operation (a KV.Batch, a CastMany) carries the context its first
operation was made in (client/batching.py).

Error handling: none is raised here; a propagator that writes nothing leaves the call's
metadata as it was.
"""

from __future__ import annotations

from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context, get_current

Metadata = tuple[tuple[str, str], ...]


def outgoing(metadata: Metadata, context: Context | None = None) -> Metadata:
    """metadata, plus the trace context of context (default: the current one) when it has
    a valid span or baggage."""
    context = get_current() if context is None else context
    if not trace.get_current_span(context).get_span_context().is_valid and not baggage.get_all(
        context
    ):
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    # gRPC metadata keys are lower case; the W3C propagators already write them so.
    return (*metadata, *((key.lower(), value) for key, value in carrier.items()))
