"""The caller's W3C trace context, recorded with what its call writes.

The interceptor reads the `traceparent`, `tracestate` and `baggage` metadata of every call
(from_metadata) into calls.Call.trace_context, and a batch's operation that names its own
context (from_record) runs with that one instead; a primitive that records provenance (a KV write, a
pushed session update, a lock release that hands the lock on, a deciding ballot) stores
record() of it beside what was written, and the agent that receives that (a watch event,
a session update, a grant, a decision) gets it back, so its own span can link to the
writer's. A call that sends no trace context records nothing: no bytes are added.

What is kept is bounded: a traceparent of exactly the W3C version-00 form (55 characters,
not all-zero ids), a tracestate of at most 512 bytes and at most 32 list members, a
baggage of at most 2048 bytes; so one record adds at most MAX_RECORD_BYTES to what it is
stored with, and the primitives count it in the write's size.

Error handling: none reaches the caller. The metadata is untrusted input: a malformed or
oversized traceparent drops the whole context; without any, a tracestate means nothing
and is dropped, a baggage is kept alone; a malformed or oversized tracestate or baggage
is dropped alone. The call
goes on either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from accord.v1 import common_pb2

TRACEPARENT_METADATA = "traceparent"
TRACESTATE_METADATA = "tracestate"
BAGGAGE_METADATA = "baggage"
MAX_TRACEPARENT = 55
MAX_TRACESTATE_BYTES = 512
MAX_TRACESTATE_MEMBERS = 32
MAX_BAGGAGE_BYTES = 2048
# The largest TraceContext record: its three strings plus their field tags and lengths.
MAX_RECORD_BYTES = MAX_TRACEPARENT + MAX_TRACESTATE_BYTES + MAX_BAGGAGE_BYTES + 16

# W3C Trace Context: version (not ff), trace id, parent id, flags; lower-case hex only.
_TRACEPARENT_RE = re.compile(r"(?!ff)[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# A tracestate list member: a simple or multi-tenant key, "=", a value of printable
# characters other than "," and "=" (not ending in a space).
_TRACESTATE_MEMBER_RE = re.compile(
    r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
# A baggage list member: a token key, "=", a value of baggage octets (percent-encoding
# for the rest), then optional ";"-separated properties of the same characters.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_BAGGAGE_VALUE = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_BAGGAGE_MEMBER_RE = re.compile(
    rf"[ \t]*{_TOKEN}[ \t]*=[ \t]*{_BAGGAGE_VALUE}[ \t]*"
    rf"(?:;[ \t]*{_TOKEN}[ \t]*(?:=[ \t]*{_BAGGAGE_VALUE})?[ \t]*)*"
)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A call's trace context, already checked and bounded ("": absent)."""

    traceparent: str
    tracestate: str = ""
    baggage: str = ""

    def record(self) -> common_pb2.TraceContext:
        return common_pb2.TraceContext(
            traceparent=self.traceparent, tracestate=self.tracestate, baggage=self.baggage
        )

    @property
    def size(self) -> int:
        """The bytes record() adds to what it is stored with (an upper bound)."""
        return len(self.traceparent) + len(self.tracestate) + len(self.baggage) + 16


def from_metadata(metadata: Mapping[str, str]) -> TraceContext | None:
    """The call's trace context, or None when it sent none or its traceparent is not
    valid. Without a traceparent, a valid baggage is kept alone (W3C baggage stands
    without a trace: an agent with a deadline and no tracing sends accord.deadline)."""
    traceparent = metadata.get(TRACEPARENT_METADATA)
    if traceparent is None:
        alone = _kept(metadata.get(BAGGAGE_METADATA, ""), MAX_BAGGAGE_BYTES, _baggage_ok)
        return TraceContext("", baggage=alone) if alone else None
    if not valid_traceparent(traceparent):
        return None
    return TraceContext(
        traceparent,
        _kept(metadata.get(TRACESTATE_METADATA, ""), MAX_TRACESTATE_BYTES, _tracestate_ok),
        _kept(metadata.get(BAGGAGE_METADATA, ""), MAX_BAGGAGE_BYTES, _baggage_ok),
    )


def from_record(record: common_pb2.TraceContext) -> TraceContext | None:
    """An operation's own trace context in a batch, checked as metadata is (an empty
    field is one not sent; None: nothing valid to record)."""
    fields = {
        TRACEPARENT_METADATA: record.traceparent,
        TRACESTATE_METADATA: record.tracestate,
        BAGGAGE_METADATA: record.baggage,
    }
    return from_metadata({key: value for key, value in fields.items() if value})


def valid_traceparent(value: str) -> bool:
    if len(value) != MAX_TRACEPARENT:
        return False
    match = _TRACEPARENT_RE.fullmatch(value)
    return match is not None and match[1] != _ZERO_TRACE and match[2] != _ZERO_SPAN


def record_of(trace: TraceContext | None) -> common_pb2.TraceContext | None:
    """What to store for a call's context: None when there is none (store nothing)."""
    return trace.record() if trace is not None else None


def size_of(trace: TraceContext | None) -> int:
    return trace.size if trace is not None else 0


def _kept(value: str, limit: int, ok: Callable[[str], bool]) -> str:
    """value if it is within limit bytes and well formed, else "" (dropped)."""
    if not value or len(value) > limit or not value.isascii() or not ok(value):
        return ""
    return value


def _tracestate_ok(value: str) -> bool:
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    return len(members) <= MAX_TRACESTATE_MEMBERS and all(
        _TRACESTATE_MEMBER_RE.fullmatch(m) for m in members
    )


def _baggage_ok(value: str) -> bool:
    return all(_BAGGAGE_MEMBER_RE.fullmatch(m) for m in value.split(","))
