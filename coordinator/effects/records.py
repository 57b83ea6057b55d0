"""The effect ledger's records as etcd holds them, and the checks on what a caller sends:
pure, no I/O.

An effect is stored as the contract's own accord.v1.Effect at keyspace.effect (no record
type of its own: every field a reader sees is either written once by the call that
changed it or derived on read from etcd's own metadata, so a second message would only
copy it). Derived on read:
- began_revision: the record's create_revision (the Begin that created it);
- claim, while the record says RUNNING: its mod_revision (the write that claimed it also
  created the claim key, in the same transaction, so both carry that revision);
- IN_DOUBT: the record says RUNNING but its claim key (on the executor's lease) is gone.
A finished or aborted record keeps the claim it ended with in `claim`.

A run is stored as accord.v1.Run at RunKeys.record (status, created, updated); its counts
and resume_at are computed on read from the run's marker keys (runs.py).

Error handling: the checks return FieldViolations (or raise InvalidArgument through
require); nothing here raises otherwise.
"""

from __future__ import annotations

import hashlib
import time

from google.protobuf import timestamp_pb2

from accord.coordinator.observability import trace_context
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import FieldViolation
from accord.coordinator.substrate.idempotency import fingerprint
from accord.coordinator.substrate.limits import Limits, check_key, check_value

__all__ = ["check_value"]
from accord.coordinator.substrate.txn import KeyValue
from accord.v1 import effects_pb2

MAX_NAME_BYTES = 256  # keys, run ids, tool names
MAX_TEXT_BYTES = 1024  # summaries, abort reasons
_NAMES = Limits(max_key_bytes=MAX_NAME_BYTES)
COMPENSATE_PREFIX = "compensate:"

RUNNING = effects_pb2.EFFECT_STATE_RUNNING
IN_DOUBT = effects_pb2.EFFECT_STATE_IN_DOUBT
ABORTED = effects_pb2.EFFECT_STATE_ABORTED
SUCCEEDED = effects_pb2.EFFECT_STATE_SUCCEEDED
FAILED = effects_pb2.EFFECT_STATE_FAILED
FINAL = frozenset({SUCCEEDED, FAILED})

# Marker kinds under a run (RunKeys.marker): o while the effect has no outcome, a while
# it is aborted, s or f once it has one.
OPEN, ABORTED_MARK, SUCCEEDED_MARK, FAILED_MARK = b"o", b"a", b"s", b"f"


def check_name(field: str, value: str) -> list[FieldViolation]:
    """1-256 bytes of UTF-8 without control characters."""
    return check_key(field, value, _NAMES)


def check_text(field: str, value: str) -> list[FieldViolation]:
    size = len(value.encode())
    if size > MAX_TEXT_BYTES:
        return [FieldViolation(field, f"is {size} bytes; the limit is {MAX_TEXT_BYTES}")]
    return []


def check_failure(field: str, value: str, limits: Limits) -> list[FieldViolation]:
    """A failure's text: at most --max-value-bytes, like a result."""
    return check_value(field, value.encode(), limits)


def check_intent(field: str, intent: effects_pb2.Intent, limits: Limits) -> list[FieldViolation]:
    violations = check_name(f"{field}.tool", intent.tool)
    violations += check_value(f"{field}.arguments", intent.arguments, limits)
    return violations + check_text(f"{field}.summary", intent.summary)


def intent_digest(intent: effects_pb2.Intent) -> bytes:
    """What makes two intents the same tool call: the tool and its arguments (a summary
    is for people and may be reworded)."""
    return fingerprint(b"effect-intent", intent.tool.encode(), intent.arguments)


def compensation_key(key: str) -> str:
    """The effect key of the compensation of effect `key`: derived, so every agent
    compensating a run begins the same one."""
    derived = COMPENSATE_PREFIX + key
    if len(derived.encode()) <= MAX_NAME_BYTES:
        return derived
    return COMPENSATE_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def actor(lease_id: int) -> effects_pb2.EffectActor:
    """Who is calling, with which lease, now, and the call's trace context."""
    call = calls.current.get()
    who = effects_pb2.EffectActor(
        agent_id=call.agent_id, principal=call.principal, lease_id=lease_id, at=now()
    )
    traced = trace_context.record_of(call.trace_context)
    if traced is not None:
        who.trace_context.CopyFrom(traced)
    return who


def effect_of(
    raw: KeyValue, claim: KeyValue | None, *, claim_read: bool = True
) -> effects_pb2.Effect:
    """The effect a stored record describes. claim: its claim key as read with it (None:
    absent); claim_read False when it was not read (a RUNNING record then reads RUNNING)."""
    effect = effects_pb2.Effect.FromString(raw.value)
    effect.began_revision = raw.create_revision
    if effect.state == RUNNING:
        effect.claim = raw.mod_revision
        if claim_read and (claim is None or claim.create_revision != raw.mod_revision):
            effect.state = IN_DOUBT
    return effect


def stored(effect: effects_pb2.Effect) -> bytes:
    """The record to write: without what is derived on read."""
    record = effects_pb2.Effect()
    record.CopyFrom(effect)
    record.began_revision = 0
    if record.state in (RUNNING, IN_DOUBT):
        record.state = RUNNING
        record.claim = 0
    return record.SerializeToString()


def marker_of(state: effects_pb2.EffectState.ValueType) -> bytes:
    return SUCCEEDED_MARK if state == SUCCEEDED else FAILED_MARK


def state_name(state: effects_pb2.EffectState.ValueType) -> str:
    return effects_pb2.EffectState.Name(state).removeprefix("EFFECT_STATE_")
