"""The trace context a call sends is kept only when well formed and within its bounds;
what is invalid is dropped, never an error."""

from __future__ import annotations

import pytest

from accord.client import TraceContext as ClientTraceContext
from accord.client import link, parent
from accord.coordinator.observability import trace_context
from accord.coordinator.observability.trace_context import TraceContext, from_metadata

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
GOOD = f"00-{TRACE_ID}-{SPAN_ID}-01"


def test_a_full_context_is_kept() -> None:
    got = from_metadata(
        {"traceparent": GOOD, "tracestate": "vendor=abc,t@x=1", "baggage": "accord.deadline=17"}
    )
    assert got == TraceContext(GOOD, "vendor=abc,t@x=1", "accord.deadline=17")
    assert got.size <= trace_context.MAX_RECORD_BYTES


def test_no_traceparent_means_no_context_but_baggage_alone() -> None:
    assert from_metadata({}) is None
    assert from_metadata({"tracestate": "a=b"}) is None
    assert from_metadata({"tracestate": "a=b", "baggage": "k=v"}) == TraceContext("", "", "k=v")
    assert from_metadata({"baggage": "not baggage"}) is None
    assert trace_context.record_of(None) is None
    assert trace_context.size_of(None) == 0


@pytest.mark.parametrize(
    "traceparent",
    [
        GOOD + "0",  # 56 characters: over the bound
        GOOD[:-1],  # too short
        GOOD.upper(),  # upper-case hex
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # the forbidden version
        f"00_{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-0g",
        "x" * 5000,
        "",
    ],
)
def test_an_invalid_traceparent_drops_the_whole_context(traceparent: str) -> None:
    assert from_metadata({"traceparent": traceparent, "tracestate": "a=b"}) is None


@pytest.mark.parametrize(
    "tracestate",
    [
        "a=" + "x" * 254 + ",b=" + "y" * 254,  # 513 bytes
        "UPPER=1",
        "a=b,=c",
        "a=b\n",
        "a=b,c",
        ",".join(f"k{i}=v" for i in range(33)),  # 33 members
        "k=vé",
    ],
)
def test_an_invalid_or_oversized_tracestate_is_dropped_alone(tracestate: str) -> None:
    got = from_metadata({"traceparent": GOOD, "tracestate": tracestate, "baggage": "k=v"})
    assert got == TraceContext(GOOD, "", "k=v")


def test_bounds_are_inclusive() -> None:
    state = "a=" + "x" * 254 + ",b=" + "y" * 253  # 512 bytes (a value is at most 256)
    assert len(state) == 512
    baggage = "k=" + "v" * 2046  # 2048 bytes
    got = from_metadata({"traceparent": GOOD, "tracestate": state, "baggage": baggage})
    assert got == TraceContext(GOOD, state, baggage)


@pytest.mark.parametrize(
    "baggage",
    [
        "k=" + "v" * 2047,  # 2049 bytes
        "k=v,novalue",
        "k=a b",
        'k="q"',
        "k=v\r\nx: y",
        "k=é",
    ],
)
def test_an_invalid_or_oversized_baggage_is_dropped_alone(baggage: str) -> None:
    got = from_metadata({"traceparent": GOOD, "tracestate": "a=b", "baggage": baggage})
    assert got == TraceContext(GOOD, "a=b", "")


def test_baggage_with_properties_and_percent_encoding_is_kept() -> None:
    baggage = "accord.deadline=1700000000000;ttl=5, user=J%20Doe"
    got = from_metadata({"traceparent": GOOD, "baggage": baggage})
    assert got is not None and got.baggage == baggage


def test_the_client_helpers_turn_a_record_into_a_link_a_parent_and_baggage() -> None:
    recorded = ClientTraceContext(GOOD, "vendor=abc", "accord.deadline=1700000000000,x=J%20Doe")
    span = link(recorded).context
    assert (span.trace_id, span.span_id, span.is_remote) == (
        int(TRACE_ID, 16),
        int(SPAN_ID, 16),
        True,
    )
    assert recorded.baggage_items() == {"accord.deadline": "1700000000000", "x": "J Doe"}
    assert parent(recorded) is not None
    assert not link(None).context.is_valid
