"""How large a session's document may grow, and what a response carrying it may weigh.

Every Sessions response must fit a standard gRPC client (4 MiB a message). A document is
kept under a per-session limit (`--session-max-bytes`, 3 MiB of encoded Yjs state by
default), checked cheaply at each write: the loaded document keeps an upper bound of its
encoded size (measured once, then grown by each applied update's own size), and is only
measured again (one encoding, O(document)) when that bound says a write might not fit.
An update of deletions only is always accepted, so a full document can still be
trimmed, and so is the retry of a write that was accepted (same request_id). The check
is per replica, against what it has applied plus its own writes in flight: writes
racing on several replicas can each pass, so a document may overshoot by their size
(each at most 512 KiB).

A document that got larger anyway (older data, a higher limit elsewhere, that overshoot)
still answers with a clear refusal instead of a message the client's transport rejects:
Read, Sync and a subscription's first update are measured before they are sent.

Error handling: SessionTooLarge (RESOURCE_EXHAUSTED with QuotaFailure naming the limit
and RetryInfo) for a write that would take the document past the limit, with nothing
stored, and for a read that would not fit one message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from accord.coordinator.sessions.lib0 import Reader
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import SessionTooLarge

if TYPE_CHECKING:
    from accord.coordinator.sessions.doc import SessionDoc

# Default per-session limit on the encoded Yjs state: a Sync or a subscription's first
# update carrying all of it stays far below 4 MiB.
DEFAULT_SESSION_MAX_BYTES = 3 * 1024 * 1024
# A standard client's 4 MiB, less room for the response's header and framing.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024 - 64 * 1024
# A subscriber's queued updates are merged into messages of at most this many input bytes.
MAX_MERGED_BYTES = 3 * 1024 * 1024
# RetryInfo on these refusals: a document shrinks only when someone deletes content.
RETRY_SECONDS = 30.0
MAX_BYTES_LIMIT = "session_max_bytes"
RESPONSE_LIMIT = "response_bytes"


def fits(session: SessionDoc, update: bytes, limit: int) -> bool:
    """Whether writing update keeps the document within limit (0: no limit). O(1) while
    the bound says so; else one encoding of the document (cached until it changes)."""
    size = len(update)
    return (
        limit <= 0
        or session.size_bound + session.reserved + size <= limit
        or _deletes_only(update)
        or session.encoded_size() + session.reserved + size <= limit
    )


def too_large(session: SessionDoc, update: bytes, limit: int) -> SessionTooLarge:
    held = session.encoded_size()
    return _too_large(
        session.name,
        f"session {session.name!r} would pass --session-max-bytes ({limit}): it holds "
        f"{held} bytes of encoded state and this update {len(update)}; delete content "
        f"first, or start another session",
        MAX_BYTES_LIMIT,
        held=str(held),
        allowed=str(limit),
    )


@contextlib.contextmanager
def reserved(session: SessionDoc, update: bytes) -> Iterator[None]:
    """Count update against the session while it is being written here."""
    session.reserved += len(update)
    try:
        yield
    finally:
        session.reserved -= len(update)


def _deletes_only(update: bytes) -> bool:
    """An update of no structs (only a delete set): it cannot grow the document."""
    return Reader(update, lambda fault: ValueError(fault.value)).uint() == 0


def require_fits(name: str, size: int, what: str) -> None:
    """Refuse a response of size bytes that a standard client would not accept."""
    if size > MAX_RESPONSE_BYTES:
        raise _too_large(
            name,
            f"session {name!r}: {what} would be {size} bytes, more than one message to a "
            f"standard gRPC client carries ({MAX_RESPONSE_BYTES}); the document is over "
            f"the per-session limit: delete content to bring it back under",
            RESPONSE_LIMIT,
            size=str(size),
            allowed=str(MAX_RESPONSE_BYTES),
        )


def _too_large(name: str, message: str, limit: str, **metadata: str) -> SessionTooLarge:
    namespace = calls.current.get().namespace
    return SessionTooLarge(
        message,
        subject=f"session:{namespace}/{name}",
        limit=limit,
        retry_after=RETRY_SECONDS,
        session=name,
        **metadata,
    )
