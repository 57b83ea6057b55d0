"""Domain errors and their one mapping onto gRPC status codes and google.rpc details.

Primitives raise these; the server interceptor turns them into a status with an
ErrorInfo (reason from accord.v1.ErrorReason, domain "accord.v1"), a BadRequest for
field violations, and any primitive-specific detail messages. Nothing else in the
coordinator builds gRPC errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from accord.v1 import common_pb2

DOMAIN = "accord.v1"


def _reason(value: common_pb2.ErrorReason.ValueType) -> str:
    """ErrorInfo.reason for an accord.v1.ErrorReason: its name without the prefix."""
    return common_pb2.ErrorReason.Name(value).removeprefix("ERROR_REASON_")


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class AccordError(Exception):
    """Base of every error the coordinator reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = _reason(common_pb2.ERROR_REASON_INTERNAL)

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[Message] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)
        self.metadata = dict(metadata or {})

    # Where the rest of details cut to fit the trailer budget can be read (e.g. an RPC).
    rest_of_details = ""

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        info.metadata.update(self.metadata)
        message = clip(self.message, 2000)
        details = fit_trailer(message, self.details)
        if details.notes:
            info.metadata["details_truncated"] = clip("; ".join(details.notes), 600)
            if self.rest_of_details:
                info.metadata["details_rest"] = self.rest_of_details
        packed = [info, *details.messages]
        status = status_pb2.Status(code=_CODE_NUMBERS[self.code], message=message)
        for detail in packed:
            any_msg = any_pb2.Any()
            any_msg.Pack(detail)
            status.details.append(any_msg)
        return status


# Errors travel in gRPC trailers, which clients cap (16 KiB by default): what an error
# quotes of the request is bounded.
MAX_VIOLATIONS = 20
MAX_DESCRIPTION_CHARS = 300


def clip(text: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the trailer budget -----------------------------------------------------------------
# An error's message travels twice in trailers (grpc-message, percent-encoded, and inside
# grpc-status-details-bin, base64), and standard clients refuse trailers over 8 KiB (soft)
# or 16 KiB (hard): so every error's details are cut to fit a budget (set by `accord serve
# --error-details-budget`). The cut is generic: the largest repeated field of a detail is
# halved, a long string clipped, a long bytes value emptied, until the whole fits; what
# was cut is said in ErrorInfo.metadata["details_truncated"] (field: kept of total), and
# where to read the rest in ["details_rest"] when the error knows.

DEFAULT_TRAILER_BUDGET = 8 * 1024
_budget = {"bytes": DEFAULT_TRAILER_BUDGET}  # this process's, set once at start
_TRAILER_RESERVE = 1024  # the notes above, status code, header names and framing
_LONG_SCALAR = 256  # strings and bytes shorter than this are never cut


def set_trailer_budget(budget: int) -> None:
    """The byte budget of every error's trailers, for this process (at least 2 KiB)."""
    _budget["bytes"] = max(budget, 2 * 1024)


@dataclass(frozen=True)
class FittedDetails:
    messages: list[Message]
    notes: list[str]


def trailer_bytes(message: str, details: Sequence[Message]) -> int:
    """What an error takes in trailers: the message percent-encoded, and the Status
    (message and packed details) base64-encoded."""
    encoded = message.encode()
    text = sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in encoded)
    status = (
        len(encoded) + 8 + sum(d.ByteSize() + len(d.DESCRIPTOR.full_name) + 40 for d in details)
    )
    return text + 4 * ((status + 2) // 3)


def fit_trailer(message: str, details: Sequence[Message]) -> FittedDetails:
    """Copies of details cut until the error fits the trailer budget, and what was cut."""
    copies: list[Message] = []
    for detail in details:
        copy = type(detail)()
        copy.CopyFrom(detail)
        copies.append(copy)
    notes: dict[str, tuple[int, int]] = {}
    target = _budget["bytes"] - _TRAILER_RESERVE
    while trailer_bytes(message, copies) > target:
        cut = max(
            (c for d in copies for c in _cuts(d, d.DESCRIPTOR.name)),
            key=lambda c: c[0],
            default=None,
        )
        if cut is None:  # nothing left to cut: drop the details whole
            notes["details"] = (0, len(copies))
            copies = []
            break
        _, path, owner, field, total = cut
        if field.is_repeated:
            items = getattr(owner, field.name)
            keep = len(items) // 2
            del items[keep:]
        elif field.type == field.TYPE_BYTES:
            keep = 0
            setattr(owner, field.name, b"")
        else:
            keep = len(getattr(owner, field.name)) // 2
            setattr(owner, field.name, clip(getattr(owner, field.name), keep))
        notes[path] = (keep, notes.get(path, (0, total))[1])
    return FittedDetails(
        copies, [f"{path}: kept {kept} of {total}" for path, (kept, total) in notes.items()]
    )


def _cuts(message: Message, path: str) -> list[tuple[int, str, Message, FieldDescriptor, int]]:
    """Every field of message (and of its singular message fields) that could be cut:
    (its bytes, its path, its owner, the field, its length now)."""
    found: list[tuple[int, str, Message, FieldDescriptor, int]] = []
    for field, value in message.ListFields():
        name = f"{path}.{field.name}"
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                continue
            if len(value) > 0:
                size = sum(v.ByteSize() + 3 if field.message_type else 8 for v in value)
                found.append((size, name, message, field, len(value)))
        elif field.message_type is not None:
            found += _cuts(value, name)
        elif field.type in (field.TYPE_STRING, field.TYPE_BYTES) and len(value) > _LONG_SCALAR:
            found.append((len(value), name, message, field, len(value)))
    return found


class InvalidArgument(AccordError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = _reason(common_pb2.ERROR_REASON_INVALID_ARGUMENT)

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        if len(violations) > MAX_VIOLATIONS:  # capped before anything is built per entry
            rest = len(violations) - MAX_VIOLATIONS + 1
            violations = [
                *violations[: MAX_VIOLATIONS - 1],
                FieldViolation("...", f"and {rest} more"),
            ]
        violations = [FieldViolation(clip(v.field, 200), clip(v.description)) for v in violations]
        text = "; ".join(f"{v.field}: {v.description}" for v in violations)
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
        super().__init__(f"invalid request: {text}", details=[bad])
        self.violations = list(violations)


class BadIdentity(AccordError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = _reason(common_pb2.ERROR_REASON_BAD_IDENTITY)


class ConditionFailed(AccordError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = _reason(common_pb2.ERROR_REASON_CONDITION_FAILED)


class Compacted(AccordError):
    code = grpc.StatusCode.OUT_OF_RANGE
    reason = _reason(common_pb2.ERROR_REASON_COMPACTED)


class RequestIdReused(AccordError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = _reason(common_pb2.ERROR_REASON_REQUEST_ID_REUSED)


class NotFound(AccordError):
    code = grpc.StatusCode.NOT_FOUND
    reason = _reason(common_pb2.ERROR_REASON_NOT_FOUND)


class BackendUnavailable(AccordError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = _reason(common_pb2.ERROR_REASON_BACKEND_UNAVAILABLE)


class DeadlineExceeded(AccordError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = _reason(common_pb2.ERROR_REASON_DEADLINE_EXCEEDED)


class Internal(AccordError):
    code = grpc.StatusCode.INTERNAL
    reason = _reason(common_pb2.ERROR_REASON_INTERNAL)


class EtcdRefused(Internal):
    """etcd rejected a request before applying any of it (too many ops, too large, a
    duplicate key): safe to resend its parts separately."""


class LeaseNotFound(AccordError):
    code = grpc.StatusCode.NOT_FOUND
    reason = _reason(common_pb2.ERROR_REASON_LEASE_NOT_FOUND)


class Fenced(AccordError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = _reason(common_pb2.ERROR_REASON_FENCED)


class WouldBlock(AccordError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = _reason(common_pb2.ERROR_REASON_WOULD_BLOCK)
    rest_of_details = "accord.v1.Locks/Describe lists the whole queue"


class LockTimeout(AccordError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = _reason(common_pb2.ERROR_REASON_LOCK_TIMEOUT)
    rest_of_details = "accord.v1.Locks/Describe lists the whole queue"


class NotHeld(AccordError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = _reason(common_pb2.ERROR_REASON_NOT_HELD)


class LockConflict(AccordError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = _reason(common_pb2.ERROR_REASON_LOCK_CONFLICT)


class Deadlocked(AccordError):
    code = grpc.StatusCode.ABORTED
    reason = _reason(common_pb2.ERROR_REASON_DEADLOCK)


class VoteClosed(AccordError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = _reason(common_pb2.ERROR_REASON_VOTE_CLOSED)


class NotEligible(AccordError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = _reason(common_pb2.ERROR_REASON_NOT_ELIGIBLE)


class AlreadyVoted(AccordError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = _reason(common_pb2.ERROR_REASON_ALREADY_VOTED)


class NotPermitted(AccordError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = _reason(common_pb2.ERROR_REASON_NOT_PERMITTED)


class IntentMismatch(AccordError):
    """An effect key begun again with a different intent; the details carry the Effect."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = _reason(common_pb2.ERROR_REASON_INTENT_MISMATCH)


class NothingToCompensate(AccordError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = _reason(common_pb2.ERROR_REASON_NOTHING_TO_COMPENSATE)


class Unauthenticated(AccordError):
    """No valid credential on the call (auth required)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = _reason(common_pb2.ERROR_REASON_UNAUTHENTICATED)


class PermissionDenied(AccordError):
    """A valid credential that does not allow the call: a missing role, or an agent id
    the principal may not act as."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = _reason(common_pb2.ERROR_REASON_PERMISSION_DENIED)


class QuotaExceeded(AccordError):
    """A namespace quota or request rate refused the call before it ran (RESOURCE_EXHAUSTED):
    a google.rpc.QuotaFailure names the limit, a google.rpc.RetryInfo says when to come
    back."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = _reason(common_pb2.ERROR_REASON_QUOTA_EXCEEDED)

    def __init__(
        self, message: str, *, subject: str, limit: str, retry_after: float, **metadata: str
    ) -> None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(1_000_000, int(retry_after * 1e9)))
        failure = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=subject, description=clip(limit, 200)
                )
            ]
        )
        super().__init__(
            message,
            details=[failure, retry],
            metadata={"limit": limit, "subject": subject, **metadata},
        )
        self.retry_after = retry_after


class RateExceeded(QuotaExceeded):
    """A request rate refused the call (QuotaExceeded): `what` says which rate, and
    request_bytes is the refused request's size as admission measured it (0 when it did
    not). The refusal may be answered later (quotas/tarpit.py): `after` is the same
    refusal with its RetryInfo shortened by the time it was held."""

    def __init__(
        self,
        what: str,
        *,
        subject: str,
        limit: str,
        retry_after: float,
        namespace: str,
        request_bytes: int = 0,
    ) -> None:
        super().__init__(
            f"{what}; retry in {retry_after:.3f}s",
            subject=subject,
            limit=limit,
            retry_after=retry_after,
            namespace=namespace,
        )
        self.what = what
        self.request_bytes = request_bytes
        self._subject, self._limit, self._namespace = subject, limit, namespace

    def after(self, held: float) -> RateExceeded:
        return RateExceeded(
            self.what,
            subject=self._subject,
            limit=self._limit,
            retry_after=max(0.001, self.retry_after - held),
            namespace=self._namespace,
        )


class SessionTooLarge(QuotaExceeded):
    """A session's document would outgrow its per-session limit, or a read of it would
    not fit one message to a standard client (RESOURCE_EXHAUSTED, QuotaFailure naming the
    limit). Waiting alone does not help: only deletions shrink a document."""


class StoredFailure(AccordError):
    """A failure answered before, replayed verbatim from its stored google.rpc.Status."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self._status = status
        self.code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.INTERNAL)

    def to_status(self) -> status_pb2.Status:
        return self._status


def require(violations: Sequence[FieldViolation]) -> None:
    """Refuse a request with every violation found, if there is any."""
    if violations:
        raise InvalidArgument(violations)


def invalid(field: str, description: str) -> InvalidArgument:
    """Shorthand for the common single-field case."""
    return InvalidArgument([FieldViolation(field, description)])


_CODE_NUMBERS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: code_pb2.OK,
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE: code_pb2.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
    grpc.StatusCode.ABORTED: code_pb2.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
}
_CODES_BY_NUMBER = {number: code for code, number in _CODE_NUMBERS.items()}
