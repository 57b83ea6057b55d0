"""Typed errors under one root, built from the server's google.rpc details.

Branch on the exception class (or `.reason`), never on the message text. Each class
names the `accord.v1.ErrorReason` it stands for; the table from reasons to classes is
built from those, so a reason is never spelled out by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from accord.v1 import common_pb2, effects_pb2, kv_pb2, locks_pb2, votes_pb2

ErrorReason: TypeAlias = common_pb2.ErrorReason.ValueType


def reason_name(reason: ErrorReason) -> str:
    """The reason as google.rpc.ErrorInfo carries it: the enum name without its prefix."""
    return common_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


class AccordError(Exception):
    """Root of every error the client raises. `reason` is the one the server gave ("" for
    errors the client met on its own, such as no replica answering)."""

    # The ErrorReason whose errors become this class (None: no reason of its own).
    REASON: ClassVar[ErrorReason | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        details: Sequence[Message] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}
        self.details = list(details or ())


class InvalidArgumentError(AccordError):
    REASON = common_pb2.ERROR_REASON_INVALID_ARGUMENT

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        return [
            (v.field, v.description)
            for d in self.details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]


class ConditionFailedError(AccordError):
    REASON = common_pb2.ERROR_REASON_CONDITION_FAILED

    @property
    def failures(self) -> list[kv_pb2.ConditionFailure]:
        return [d for d in self.details if isinstance(d, kv_pb2.ConditionFailure)]

    @property
    def current_mod_revision(self) -> int:
        failures = self.failures
        return failures[0].current_mod_revision if failures else 0


class CompactedError(AccordError):
    REASON = common_pb2.ERROR_REASON_COMPACTED

    @property
    def compact_revision(self) -> int:
        for d in self.details:
            if isinstance(d, common_pb2.CompactedFailure):
                return d.compact_revision
        return 0


class RequestIdReusedError(AccordError):
    REASON = common_pb2.ERROR_REASON_REQUEST_ID_REUSED


class NotFoundError(AccordError):
    REASON = common_pb2.ERROR_REASON_NOT_FOUND


class UnavailableError(AccordError):
    """No replica (or etcd behind it) could be reached in time."""

    REASON = common_pb2.ERROR_REASON_BACKEND_UNAVAILABLE


class DeadlineExceededError(AccordError):
    REASON = common_pb2.ERROR_REASON_DEADLINE_EXCEEDED


class BadIdentityError(AccordError):
    REASON = common_pb2.ERROR_REASON_BAD_IDENTITY


class InternalError(AccordError):
    REASON = common_pb2.ERROR_REASON_INTERNAL


class FencedError(AccordError):
    """The write's lock grant no longer holds: nothing was written."""

    REASON = common_pb2.ERROR_REASON_FENCED

    @property
    def current_tokens(self) -> list[int]:
        for d in self.details:
            if isinstance(d, common_pb2.FenceFailure):
                return list(d.current_tokens)
        return []


class LeaseNotFoundError(AccordError):
    """The lease expired, was revoked, or belongs to another namespace."""

    REASON = common_pb2.ERROR_REASON_LEASE_NOT_FOUND


class DeadlockError(AccordError):
    """This wait was chosen to end a deadlock; `deadlock` lists the whole cycle."""

    REASON = common_pb2.ERROR_REASON_DEADLOCK

    @property
    def deadlock(self) -> locks_pb2.Deadlock | None:
        return next((d for d in self.details if isinstance(d, locks_pb2.Deadlock)), None)


class _LockWaitError(AccordError):
    @property
    def status(self) -> locks_pb2.LockWaitStatus | None:
        return next((d for d in self.details if isinstance(d, locks_pb2.LockWaitStatus)), None)


class WouldBlockError(_LockWaitError):
    """A try-acquire found the lock taken; `status` says by whom."""

    REASON = common_pb2.ERROR_REASON_WOULD_BLOCK


@dataclass(frozen=True, slots=True)
class WaitEstimate:
    """Why a lock wait failed fast instead of waiting out the caller's time: the waiters
    ahead, the lock's typical hold as the replica saw holds end, the wait that makes at
    least (seconds), and the time that was left."""

    position: int
    typical_hold: float
    expected_wait: float
    remaining: float
    samples: int


class LockTimeoutError(_LockWaitError):
    """An acquire gave up waiting, or failed fast because the time left was shorter than
    the wait would take (`fail_fast`); `status` says what it waited behind."""

    REASON = common_pb2.ERROR_REASON_LOCK_TIMEOUT

    @property
    def fail_fast(self) -> WaitEstimate | None:
        """The estimate behind a fast failure; None when the wait ran out of time."""
        meta = self.metadata
        if meta.get("fail_fast") != "expected_wait":
            return None
        try:
            return WaitEstimate(
                position=int(meta["position"]),
                typical_hold=int(meta["typical_hold_ms"]) / 1000,
                expected_wait=int(meta["expected_wait_ms"]) / 1000,
                remaining=int(meta["remaining_ms"]) / 1000,
                samples=int(meta["samples"]),
            )
        except (KeyError, ValueError):
            return None


class NotHeldError(AccordError):
    REASON = common_pb2.ERROR_REASON_NOT_HELD


class LockConflictError(AccordError):
    REASON = common_pb2.ERROR_REASON_LOCK_CONFLICT


class VoteClosedError(AccordError):
    """The vote is decided or past its deadline; `decision` says how, once there is one."""

    REASON = common_pb2.ERROR_REASON_VOTE_CLOSED

    @property
    def decision(self) -> votes_pb2.Decision | None:
        return next((d for d in self.details if isinstance(d, votes_pb2.Decision)), None)


class NotEligibleError(AccordError):
    """The caller is not in the vote's electorate (or may not veto)."""

    REASON = common_pb2.ERROR_REASON_NOT_ELIGIBLE


class AlreadyVotedError(AccordError):
    """The vote does not allow changes and the caller's other ballot stands: `ballot`."""

    REASON = common_pb2.ERROR_REASON_ALREADY_VOTED

    @property
    def ballot(self) -> votes_pb2.Ballot | None:
        return next((d for d in self.details if isinstance(d, votes_pb2.Ballot)), None)


class NotPermittedError(AccordError):
    """The caller may not do this (e.g. cancel a vote it did not propose)."""

    REASON = common_pb2.ERROR_REASON_NOT_PERMITTED


class UnauthenticatedError(AccordError):
    """The call carried no valid token: none, malformed, unknown, expired or revoked.
    Pass ``token=`` (or set ACCORD_TOKEN)."""

    REASON = common_pb2.ERROR_REASON_UNAUTHENTICATED


class PermissionDeniedError(AccordError):
    """The token is valid but does not allow the call. `role` and `namespace` say which
    role was missing where; `agents`, the agent ids the token may act as."""

    REASON = common_pb2.ERROR_REASON_PERMISSION_DENIED

    @property
    def role(self) -> str:
        return self.metadata.get("role", "")

    @property
    def namespace(self) -> str:
        return self.metadata.get("namespace", "")

    @property
    def agents(self) -> list[str]:
        listed = self.metadata.get("agents", "")
        return listed.split(",") if listed else []


class QuotaExceededError(AccordError):
    """A namespace quota or request rate refused the call before it ran: nothing was
    written. `limit` names the quota (e.g. "keys", "requests_per_second"), `subject`
    what it applies to ("namespace:NS" or "agent:NS/ID"), and `retry_after` says when to
    come back (seconds; the client already waited that long when it could retry)."""

    REASON = common_pb2.ERROR_REASON_QUOTA_EXCEEDED

    @property
    def limit(self) -> str:
        return self.metadata.get("limit", "")

    @property
    def subject(self) -> str:
        return self.metadata.get("subject", "")

    @property
    def retry_after(self) -> float | None:
        return retry_after(self)


class IntentMismatchError(AccordError):
    """The effect key was begun with a different intent (tool or arguments): a key names
    one tool call. `effect` is the effect as recorded."""

    REASON = common_pb2.ERROR_REASON_INTENT_MISMATCH

    @property
    def effect(self) -> effects_pb2.Effect | None:
        return next((d for d in self.details if isinstance(d, effects_pb2.Effect)), None)


class NothingToCompensateError(AccordError):
    """The run has no registered compensation to run."""

    REASON = common_pb2.ERROR_REASON_NOTHING_TO_COMPENSATE


class _EffectError(AccordError):
    """Raised by the effect wrappers (client/effect_tools.py) on their own, from what Begin
    or Complete answered: `effect` is the effect as recorded."""

    def __init__(self, message: str, effect: effects_pb2.Effect) -> None:
        super().__init__(message, details=[effect])

    @property
    def effect(self) -> effects_pb2.Effect:
        found = next((d for d in self.details if isinstance(d, effects_pb2.Effect)), None)
        return found if found is not None else effects_pb2.Effect()


class EffectInDoubtError(_EffectError):
    """A previous executor began the effect and its lease ended before it recorded an
    outcome: whether the tool ran is unknown. `effect.intent` is what was meant,
    `effect.began` / `effect.claimed` who began it and when. Look it up in the external
    system by `effect.key`, then run the step again with a `reconcile` callback."""


class EffectBusyError(_EffectError):
    """Another live executor (`effect.claimed`) still held the effect when the wait for
    it ended."""


class EffectFailedError(_EffectError):
    """The effect completed with a failure (`failure`, as its executor recorded it); the
    failure stands, and the tool is not run again under this key."""

    @property
    def failure(self) -> str:
        return self.effect.outcome.failure


class NotJSONError(AccordError, ValueError):
    """A tool's arguments or result have no exact JSON form (NaN, bytes, a set, a dict
    key that is not a string, ...): nothing was sent."""


def retry_after(error: AccordError) -> float | None:
    """The server's google.rpc.RetryInfo on an error: seconds to wait before trying
    again (None: the server said nothing)."""
    for d in error.details:
        if isinstance(d, error_details_pb2.RetryInfo):
            nanoseconds: int = d.retry_delay.ToNanoseconds()
            return nanoseconds / 1e9
    return None


def _with_reasons(cls: type[AccordError]) -> list[type[AccordError]]:
    below = [c for sub in cls.__subclasses__() for c in _with_reasons(sub)]
    return [cls, *below] if cls.REASON is not None else below


# Reason (as the server writes it) -> the class raised for it.
BY_REASON: Mapping[str, type[AccordError]] = {
    reason_name(cls.REASON): cls for cls in _with_reasons(AccordError) if cls.REASON is not None
}

_BY_CODE: dict[grpc.StatusCode, type[AccordError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}

_DETAIL_TYPES = [
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    kv_pb2.ConditionFailure,
    common_pb2.CompactedFailure,
    common_pb2.FenceFailure,
    locks_pb2.Deadlock,
    locks_pb2.LockWaitStatus,
    votes_pb2.Decision,
    votes_pb2.Ballot,
    effects_pb2.Effect,
]


def from_rpc_error(exc: grpc.aio.AioRpcError) -> AccordError:
    """The typed error for a failed call, with every detail the server attached."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # the details disagree with the call's own status: not Accord's
        status = None
    details = list(status.details) if status is not None else []
    return _typed(exc.code(), exc.details() or exc.code().name, details)


def from_status(status: status_pb2.Status) -> AccordError:
    """The typed error for one operation of a batch that failed, from its google.rpc
    Status (the same error its unary call would have raised)."""
    code = _CODES_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
    return _typed(code, status.message or code.name, list(status.details))


def _typed(code: grpc.StatusCode, message: str, packed: list[any_pb2.Any]) -> AccordError:
    found = [d for d in (_unpack(p) for p in packed) if d is not None]
    info = next((d for d in found if isinstance(d, error_details_pb2.ErrorInfo)), None)
    reason = info.reason if info is not None else ""
    cls = BY_REASON.get(reason) or _BY_CODE.get(code, AccordError)
    return cls(
        message,
        code=code,
        reason=reason,
        metadata=dict(info.metadata) if info is not None else {},
        details=found,
    )


_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def _unpack(packed: any_pb2.Any) -> Message | None:
    """A detail of a known type, unpacked; None for any other."""
    for kind in _DETAIL_TYPES:
        if packed.Is(kind.DESCRIPTOR):
            message: Message = kind()
            packed.Unpack(message)
            return message
    return None
