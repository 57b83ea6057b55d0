"""Refusals as tool results an LLM can act on, and the one way a tool answers.

`answer(work)` runs a tool's work and gives the SDK a CallToolResult: the work's model
as structured content (and as JSON text, for hosts that read only text), or, when Accord
or the façade refused, a result with isError set whose structured content is a `Refusal`:
the reason (Accord's ErrorReason name, e.g. CONDITION_FAILED, FENCED, DEADLOCK,
QUOTA_EXCEEDED, UNAUTHENTICATED), the service's message, what to do next, and the facts
that decide it -- a CAS conflict's current value, revision and writer; a deadlock's cycle
and victim; a fence failure's lock and who holds it now; a lock wait's holders and queue
position; when to come back after a quota.

Error handling: only AccordError and FacadeRefusal become refusals. Anything else is a
bug and propagates (the SDK reports it as a generic tool error and logs it). Looking up
who holds a lock for a FENCED refusal is best effort: if that read fails too, the
refusal goes out without the holders.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

from google.protobuf import timestamp_pb2
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from accord.client import (
    AccordError,
    AsyncClient,
    ConditionFailedError,
    DeadlockError,
    FencedError,
    KeyValue,
    LockTimeoutError,
    PermissionDeniedError,
    Provenance,
    QuotaExceededError,
    UnauthenticatedError,
    UnavailableError,
    WouldBlockError,
)
from accord.client.errors import retry_after
from accord.v1 import common_pb2, kv_pb2, locks_pb2

log = logging.getLogger("accord.mcp")


# --- values, as every tool shows them ----------------------------------------------


class Writer(BaseModel):
    """Who wrote a value (its provenance)."""

    agent_id: str
    principal: str = Field(description="the authenticated principal ('' with auth off)")
    written_at: str | None = Field(description="ISO 8601, UTC")
    request_id: str


class Value(BaseModel):
    """A memory value: UTF-8 text, or base64 when the bytes are not UTF-8."""

    key: str
    value: str
    encoding: Literal["utf-8", "base64"]
    revision: int = Field(description="the key's mod revision: pass as expected_revision")
    create_revision: int
    version: int = Field(description="writes since the key was created")
    written_by: Writer


def text_of(data: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def writer_of(p: Provenance) -> Writer:
    at = p.written_at.isoformat() if isinstance(p.written_at, datetime) else None
    return Writer(
        agent_id=p.agent_id, principal=p.principal, written_at=at, request_id=p.request_id
    )


def value_of(kv: KeyValue) -> Value:
    text, encoding = text_of(kv.value)
    return Value(
        key=kv.key,
        value=text,
        encoding=encoding,
        revision=kv.mod_revision,
        create_revision=kv.create_revision,
        version=kv.version,
        written_by=writer_of(kv.written_by),
    )


def value_of_proto(kv: kv_pb2.KeyValue) -> Value:
    return value_of(KeyValue._from(kv))


def iso(ts: timestamp_pb2.Timestamp) -> str | None:
    return ts.ToDatetime().isoformat() + "Z" if ts.seconds else None


# --- refusals ------------------------------------------------------------------------


class FacadeRefusal(ToolError):
    """A refusal the façade makes itself, before calling Accord (reason: its name)."""

    def __init__(
        self,
        reason: str,
        message: str,
        what_to_do: str,
        *,
        conflict: Conflict | None = None,
        wait: LockWait | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.what_to_do = what_to_do
        self.conflict = conflict
        self.wait = wait


class Conflict(BaseModel):
    """A compare failed: the key as it is now."""

    key: str
    exists: bool
    current: Value | None = Field(description="the current value, when it exists and fits")
    current_revision: int = Field(description="pass as expected_revision to write over it")
    checked_at_revision: int


class LockHolder(BaseModel):
    agent_id: str
    token: int = Field(description="the holder's fencing token")
    since: str | None
    lease_ttl_seconds: int


class FenceLost(BaseModel):
    """A fenced write was refused: the grant it named no longer holds the lock."""

    lock: str
    your_token: int
    holders_now: list[LockHolder] = Field(description="who holds the lock now (empty: nobody)")


class WaitEdgeOut(BaseModel):
    waiter_agent: str
    lock: str
    holder_agent: str


class DeadlockInfo(BaseModel):
    id: str
    cycle: list[WaitEdgeOut] = Field(description="each edge's holder is the next edge's waiter")
    victim_agent: str
    victim_lock: str
    policy: str = Field(description="why this victim")


class LockWait(BaseModel):
    """Why a lock could not be had: who holds it, who waits, where the caller stood."""

    lock: str
    holders: list[LockHolder]
    waiters: list[str] = Field(description="agent ids in queue order")
    position: int = Field(description="the caller's place among waiters when it gave up")
    expected_wait_seconds: float | None = Field(
        description="for a fast failure: the wait the queue would have taken at least"
    )


class QuotaHit(BaseModel):
    limit: str = Field(description="the quota, e.g. keys or requests_per_second")
    subject: str = Field(description="what it applies to: namespace:NS or agent:NS/ID")


class Refusal(BaseModel):
    """What a refused call returns (with isError set): act on `reason` and `what_to_do`."""

    refused: Literal[True] = True
    reason: str = Field(description="Accord's reason (e.g. CONDITION_FAILED, FENCED, DEADLOCK)")
    message: str
    what_to_do: str
    retry_after_seconds: float | None = None
    conflict: Conflict | None = None
    fence: FenceLost | None = None
    deadlock: DeadlockInfo | None = None
    wait: LockWait | None = None
    missing_role: str | None = None
    quota: QuotaHit | None = None


def holders_of(entries: list[locks_pb2.LockEntry]) -> list[LockHolder]:
    return [
        LockHolder(
            agent_id=e.agent_id,
            token=e.token,
            since=iso(e.since),
            lease_ttl_seconds=e.lease_ttl_seconds,
        )
        for e in entries
    ]


def _conflict(error: ConditionFailedError) -> Conflict | None:
    failure = next(iter(error.failures), None)
    if failure is None:
        return None
    return Conflict(
        key=failure.key,
        exists=failure.exists,
        current=value_of_proto(failure.current) if failure.HasField("current") else None,
        current_revision=failure.current_mod_revision,
        checked_at_revision=failure.revision,
    )


def _deadlock(error: DeadlockError) -> DeadlockInfo | None:
    found = error.deadlock
    if found is None:
        return None
    return DeadlockInfo(
        id=found.id,
        cycle=[
            WaitEdgeOut(waiter_agent=e.waiter_agent, lock=e.lock, holder_agent=e.holder_agent)
            for e in found.cycle
        ],
        victim_agent=found.victim_agent,
        victim_lock=found.victim_lock,
        policy=found.policy,
    )


def _wait(error: LockTimeoutError | WouldBlockError) -> LockWait | None:
    status = error.status
    if status is None:
        return None
    fast = error.fail_fast if isinstance(error, LockTimeoutError) else None
    return LockWait(
        lock=status.state.name,
        holders=holders_of(list(status.state.holders)),
        waiters=[w.agent_id for w in status.state.waiters],
        position=status.position,
        expected_wait_seconds=fast.expected_wait if fast is not None else None,
    )


async def _fence(error: FencedError, client: AsyncClient | None) -> FenceLost | None:
    failure = next((d for d in error.details if isinstance(d, common_pb2.FenceFailure)), None)
    if failure is None:
        return None
    lock, token = failure.lock, failure.token
    holders: list[LockHolder] = []
    if client is not None and lock:
        try:
            state, _ = await client.locks.describe(lock, timeout=5.0)
            holders = holders_of(list(state.holders))
        except AccordError as exc:
            log.info("who holds %s, for a FENCED refusal: %s", lock, exc.message)
    return FenceLost(lock=lock, your_token=token, holders_now=holders)


WOULD_BLOCK_ADVICE = (
    "The lock is held now (see `wait.holders`). Do other work and try later, or acquire "
    "with wait_seconds to queue for it."
)

_ADVICE: dict[type[AccordError], str] = {
    ConditionFailedError: (
        "Someone wrote the key since you read it. Read `conflict.current` (its value, "
        "revision and writer), merge your change into it if it still makes sense, and write "
        "again with expected_revision = conflict.current_revision."
    ),
    FencedError: (
        "Your lock was lost (its lease ended, or it was released or broken) and `fence."
        "holders_now` holds it now; nothing was written. Do not write under that lock again: "
        "acquire it anew, re-read what it protects, and redo your change from there."
    ),
    DeadlockError: (
        "You were chosen to break a deadlock: your wait is cancelled, the other locks you "
        "hold are still yours. Release what you hold (accord_locks_release), then acquire "
        "all the locks you need again in one consistent order (e.g. sorted by name)."
    ),
    LockTimeoutError: (
        "The lock stayed held for the whole wait. Call accord_locks_why_blocked to see the "
        "holders, do other work, and try again later, or wait longer if the estimate fits."
    ),
    WouldBlockError: WOULD_BLOCK_ADVICE,
    QuotaExceededError: (
        "A quota refused the call; nothing was done. Wait retry_after_seconds, then send the "
        "same call again (with the same request_id, where the tool takes one)."
    ),
    UnauthenticatedError: (
        "The service did not accept this session's token (none, unknown, expired or "
        "revoked). The operator must configure a valid Accord token; retrying will not help."
    ),
    PermissionDeniedError: (
        "This session's token lacks the role this call needs in this namespace; nothing was "
        "done. Ask the operator for the role, or do only what the token allows."
    ),
    UnavailableError: (
        "No replica answered in time. Nothing may or may not have been applied: retry the "
        "same call (with the same request_id, where the tool takes one)."
    ),
}


def _advice(error: AccordError) -> str:
    for cls in type(error).__mro__:
        if cls in _ADVICE:
            return _ADVICE[cls]
    return "The service refused the call (see reason and message); fix the request before retrying."


async def refusal(error: AccordError, client: AsyncClient | None = None) -> Refusal:
    out = Refusal(
        reason=error.reason or (error.code.name if error.code is not None else "UNKNOWN"),
        message=error.message,
        what_to_do=_advice(error),
        retry_after_seconds=retry_after(error),
    )
    if isinstance(error, ConditionFailedError):
        out.conflict = _conflict(error)
    elif isinstance(error, FencedError):
        out.fence = await _fence(error, client)
    elif isinstance(error, DeadlockError):
        out.deadlock = _deadlock(error)
    elif isinstance(error, LockTimeoutError | WouldBlockError):
        out.wait = _wait(error)
    elif isinstance(error, PermissionDeniedError):
        out.missing_role = error.role or None
    elif isinstance(error, QuotaExceededError):
        out.quota = QuotaHit(limit=error.limit, subject=error.subject)
    return out


def _result(model: BaseModel, *, is_error: bool) -> CallToolResult:
    data = model.model_dump(mode="json", by_alias=True)
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data))],
        structured_content=data,
        is_error=is_error,
    )


async def answer(
    work: Awaitable[BaseModel], client: Callable[[], AsyncClient | None] = lambda: None
) -> CallToolResult:
    """work's result, or the refusal it met, as a tool result. client: the client to
    look up who holds a lock after a FENCED refusal (None: none yet)."""
    try:
        return _result(await work, is_error=False)
    except FacadeRefusal as exc:
        return _result(
            Refusal(
                reason=exc.reason,
                message=exc.message,
                what_to_do=exc.what_to_do,
                conflict=exc.conflict,
                wait=exc.wait,
            ),
            is_error=True,
        )
    except AccordError as exc:
        return _result(await refusal(exc, client()), is_error=True)
