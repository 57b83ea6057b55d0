"""Typed errors under one root, built from the server's google.rpc details.

Branch on the exception class (or `.reason`), never on the message text.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from accord.v1 import common_pb2, kv_pb2, locks_pb2, votes_pb2


class AccordError(Exception):
    """Root of every error the client raises."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}
        self.details = details or []


class InvalidArgumentError(AccordError):
    @property
    def field_violations(self) -> list[tuple[str, str]]:
        return [
            (v.field, v.description)
            for d in self.details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]


class ConditionFailedError(AccordError):
    @property
    def failures(self) -> list[kv_pb2.ConditionFailure]:
        return [d for d in self.details if isinstance(d, kv_pb2.ConditionFailure)]

    @property
    def current_mod_revision(self) -> int:
        failures = self.failures
        return failures[0].current_mod_revision if failures else 0


class CompactedError(AccordError):
    @property
    def compact_revision(self) -> int:
        for d in self.details:
            if isinstance(d, common_pb2.CompactedFailure):
                return d.compact_revision
        return 0


class RequestIdReusedError(AccordError):
    pass


class NotFoundError(AccordError):
    pass


class UnavailableError(AccordError):
    """No replica (or etcd behind it) could be reached in time."""


class DeadlineExceededError(AccordError):
    pass


class BadIdentityError(AccordError):
    pass


class InternalError(AccordError):
    pass


class FencedError(AccordError):
    """The write's lock grant no longer holds: nothing was written."""

    @property
    def current_tokens(self) -> list[int]:
        for d in self.details:
            if isinstance(d, common_pb2.FenceFailure):
                return list(d.current_tokens)
        return []


class LeaseNotFoundError(AccordError):
    """The lease expired, was revoked, or belongs to another namespace."""


class DeadlockError(AccordError):
    """This wait was chosen to end a deadlock; `deadlock` lists the whole cycle."""

    @property
    def deadlock(self) -> locks_pb2.Deadlock | None:
        return next((d for d in self.details if isinstance(d, locks_pb2.Deadlock)), None)


class _LockWaitError(AccordError):
    @property
    def status(self) -> locks_pb2.LockWaitStatus | None:
        return next((d for d in self.details if isinstance(d, locks_pb2.LockWaitStatus)), None)


class WouldBlockError(_LockWaitError):
    """A try-acquire found the lock taken; `status` says by whom."""


class LockTimeoutError(_LockWaitError):
    """An acquire gave up waiting; `status` says what it waited behind."""


class NotHeldError(AccordError):
    pass


class LockConflictError(AccordError):
    pass


class VoteClosedError(AccordError):
    """The vote is decided or past its deadline; `decision` says how, once there is one."""

    @property
    def decision(self) -> votes_pb2.Decision | None:
        return next((d for d in self.details if isinstance(d, votes_pb2.Decision)), None)


class NotEligibleError(AccordError):
    """The caller is not in the vote's electorate (or may not veto)."""


class AlreadyVotedError(AccordError):
    """The vote does not allow changes and the caller's other ballot stands: `ballot`."""

    @property
    def ballot(self) -> votes_pb2.Ballot | None:
        return next((d for d in self.details if isinstance(d, votes_pb2.Ballot)), None)


class NotPermittedError(AccordError):
    """The caller may not do this (e.g. cancel a vote it did not propose)."""


_BY_REASON: dict[str, type[AccordError]] = {
    "INVALID_ARGUMENT": InvalidArgumentError,
    "CONDITION_FAILED": ConditionFailedError,
    "COMPACTED": CompactedError,
    "REQUEST_ID_REUSED": RequestIdReusedError,
    "NOT_FOUND": NotFoundError,
    "BACKEND_UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "BAD_IDENTITY": BadIdentityError,
    "INTERNAL": InternalError,
    "FENCED": FencedError,
    "LEASE_NOT_FOUND": LeaseNotFoundError,
    "DEADLOCK": DeadlockError,
    "WOULD_BLOCK": WouldBlockError,
    "LOCK_TIMEOUT": LockTimeoutError,
    "NOT_HELD": NotHeldError,
    "LOCK_CONFLICT": LockConflictError,
    "VOTE_CLOSED": VoteClosedError,
    "NOT_ELIGIBLE": NotEligibleError,
    "ALREADY_VOTED": AlreadyVotedError,
    "NOT_PERMITTED": NotPermittedError,
}

_BY_CODE: dict[grpc.StatusCode, type[AccordError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: InvalidArgumentError,
}

_DETAIL_TYPES = [
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    kv_pb2.ConditionFailure,
    common_pb2.CompactedFailure,
    common_pb2.FenceFailure,
    locks_pb2.Deadlock,
    locks_pb2.LockWaitStatus,
    votes_pb2.Decision,
    votes_pb2.Ballot,
]


def from_rpc_error(exc: grpc.aio.AioRpcError) -> AccordError:
    """The typed error for a failed call, with every detail the server attached."""
    reason = ""
    metadata: dict[str, str] = {}
    details: list[Any] = []
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for packed in status.details:
                for kind in _DETAIL_TYPES:
                    if packed.Is(kind.DESCRIPTOR):
                        message = kind()
                        packed.Unpack(message)
                        details.append(message)
                        if isinstance(message, error_details_pb2.ErrorInfo):
                            reason = message.reason
                            metadata = dict(message.metadata)
    cls = _BY_REASON.get(reason) or _BY_CODE.get(exc.code(), AccordError)
    return cls(
        exc.details() or exc.code().name,
        code=exc.code(),
        reason=reason,
        metadata=metadata,
        details=details,
    )
