"""Collaborative sessions as an agent uses them: a Yjs document shared through Accord.

Agents with pycrdt keep a local Doc in sync: ``async with accord.session("plan") as doc``
applies every update from any replica to `doc` and pushes the agent's own changes in
the background, in order, each push with a request_id so a retry never applies twice.
`await accord.sessions.flush(doc)` waits until every local change is durable. When the
stream breaks, it resubscribes (on any replica) from the document's state vector, so
nothing is lost or applied twice. Agents without a Yjs library use `read()` (a JSON
view) and `apply()` with the operations in `accord.client.ops`.

Presence set with `set_presence` hangs on the agent's lease: when the lease ends, it
disappears and subscribers get a PresenceGone event.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from types import TracebackType
from typing import Any, Protocol, cast

from pycrdt import Doc, Subscription, TransactionEvent, merge_updates

from accord.client import calls, deadlines
from accord.client.errors import (
    AccordError,
    DeadlineExceededError,
    InternalError,
    QuotaExceededError,
    UnavailableError,
)
from accord.client.kv import Provenance, _fence, _Fencing, _HasId, _lease
from accord.client.retry import pushback
from accord.client.trace_context import TraceContext
from accord.client.transport import Transport
from accord.v1 import common_pb2, sessions_pb2

# Errors after which a background push or subscription tries again; any other is final.
# Out of reach (no replica answers in time), it tries for as long as it runs, since
# replicas come back; INTERNAL, _MAX_QUIET_FAILURES times in a row, is final (a server
# bug, not an outage).
_OUT_OF_REACH = (UnavailableError, DeadlineExceededError)
_TRANSIENT = (*_OUT_OF_REACH, InternalError)
_MAX_QUIET_FAILURES = 50


class _Origin(Protocol):
    def origin(self) -> int | None: ...


class _Committed(Protocol):
    """What pycrdt's TransactionEvent carries at run time beyond its type stubs."""

    @property
    def transaction(self) -> _Origin: ...


class RootKind(IntEnum):
    MAP = sessions_pb2.ROOT_KIND_MAP
    TEXT = sessions_pb2.ROOT_KIND_TEXT
    ARRAY = sessions_pb2.ROOT_KIND_ARRAY


@dataclass(frozen=True, slots=True)
class SessionInfo:
    name: str
    # A deleted and recreated session has a new created_revision.
    created_revision: int
    created_by: Provenance
    roots: dict[str, RootKind]
    snapshot_revision: int
    # Whether this open created it (always False in list results).
    created: bool = False

    @staticmethod
    def _from(msg: sessions_pb2.SessionInfo, created: bool = False) -> SessionInfo:
        return SessionInfo(
            msg.name,
            msg.created_revision,
            Provenance._from(msg.created_by),
            {root: RootKind(kind) for root, kind in msg.roots.items()},
            msg.snapshot_revision,
            created,
        )


@dataclass(frozen=True, slots=True)
class Presence:
    """One participant's awareness state (cursor, status, current task, ...)."""

    client_id: int
    clock: int
    state: dict[str, Any]
    agent_id: str
    lease_id: int
    updated_at: datetime | None

    @staticmethod
    def _from(msg: sessions_pb2.Presence) -> Presence:
        at = (
            datetime.fromtimestamp(msg.updated_at.seconds + msg.updated_at.nanos / 1e9, UTC)
            if msg.HasField("updated_at")
            else None
        )
        state = json.loads(msg.state_json) if msg.state_json else {}
        return Presence(msg.client_id, msg.clock, state, msg.agent_id, msg.lease_id, at)


@dataclass(frozen=True, slots=True)
class SyncResult:
    revision: int
    # Exactly what the given state vector lacked, as one update.
    update: bytes
    # The server's state vector: push `doc.get_update(state_vector)` for what it lacks.
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SessionState:
    """What Read returns: the whole state as a snapshot update and as plain JSON."""

    revision: int
    info: SessionInfo
    snapshot: bytes
    state_vector: bytes
    # One member per root type: maps as dicts, text as str, arrays as lists.
    json: dict[str, Any]
    presence: list[Presence]
    # True when the snapshot did not fit beside the JSON in one message (snapshot is
    # then empty): sync() gives the state as an update.
    snapshot_omitted: bool = False


@dataclass(frozen=True, slots=True)
class ApplyResult:
    revision: int
    # The update the operations made (already stored and broadcast); empty if none.
    update: bytes


@dataclass(frozen=True, slots=True)
class UpdateEvent:
    revision: int
    update: bytes
    # The trace context of the Push or Apply that wrote it (None: it sent none, or the
    # update merges several: the first one, or a late subscriber's backlog).
    trace_context: TraceContext | None = None


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    revision: int
    presence: Presence


@dataclass(frozen=True, slots=True)
class PresenceGoneEvent:
    revision: int
    client_id: int
    clock: int
    agent_id: str


SessionEvent = UpdateEvent | PresenceEvent | PresenceGoneEvent


def _event(msg: sessions_pb2.SessionsSubscribeResponse) -> SessionEvent | None:
    kind = msg.WhichOneof("event")
    if kind == "update":
        return UpdateEvent(msg.revision, msg.update, TraceContext._from(msg.trace_context))
    if kind == "presence":
        return PresenceEvent(msg.revision, Presence._from(msg.presence))
    if kind == "presence_gone":
        gone = msg.presence_gone
        return PresenceGoneEvent(msg.revision, gone.client_id, gone.clock, gone.agent_id)
    return None  # a kind newer than this client


def _request_id() -> str:
    return uuid.uuid4().hex


def _roots(
    roots: Mapping[str, RootKind | str] | None,
) -> dict[str, sessions_pb2.RootKind.ValueType]:
    out: dict[str, sessions_pb2.RootKind.ValueType] = {}
    for root, kind in (roots or {}).items():
        value = RootKind[kind.upper()] if isinstance(kind, str) else RootKind(kind)
        out[root] = sessions_pb2.RootKind.ValueType(int(value))
    return out


class AsyncSessions:
    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._live: dict[int, SyncedSession] = {}

    async def open(
        self,
        name: str,
        *,
        must_exist: bool = False,
        roots: Mapping[str, RootKind | str] | None = None,
        timeout: float | None = None,
    ) -> SessionInfo:
        """Open (creating unless must_exist) a session; roots declares root types."""
        request = sessions_pb2.SessionsOpenRequest(
            name=name, must_exist=must_exist, roots=_roots(roots)
        )
        response = await self._t.unary(calls.SESSIONS_OPEN, request, timeout=timeout)
        return SessionInfo._from(response.session, response.created)

    async def list(
        self,
        prefix: str = "",
        *,
        limit: int = 0,
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> builtins.list[SessionInfo]:
        """Sessions whose names start with prefix, in name order: all, or the first limit,
        fetched page_size (at most 1000) at a time."""
        out: builtins.list[SessionInfo] = []
        token = ""
        while True:
            size = min(limit - len(out), page_size) if limit else page_size
            request = sessions_pb2.SessionsListRequest(prefix=prefix, limit=size, page_token=token)
            response = await self._t.unary(calls.SESSIONS_LIST, request, timeout=timeout)
            out.extend(SessionInfo._from(info) for info in response.sessions)
            token = response.next_page_token
            if not token or (limit and len(out) >= limit):
                return out

    async def delete(
        self,
        name: str,
        *,
        expected_created_revision: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Delete the session (only that incarnation, given expected_created_revision:
        ConditionFailedError otherwise). False when it did not exist."""
        request = sessions_pb2.SessionsDeleteRequest(
            name=name,
            expected_created_revision=expected_created_revision,
            request_id=request_id or _request_id(),
        )
        response = await self._t.unary(calls.SESSIONS_DELETE, request, timeout=timeout)
        return bool(response.deleted)

    async def sync(
        self, name: str, state_vector: bytes = b"", *, timeout: float | None = None
    ) -> SyncResult:
        request = sessions_pb2.SessionsSyncRequest(name=name, state_vector=state_vector)
        response = await self._t.unary(calls.SESSIONS_SYNC, request, timeout=timeout)
        return SyncResult(response.header.revision, response.update, response.state_vector)

    async def push(
        self,
        name: str,
        update: bytes,
        *,
        request_id: str | None = None,
        fence: _Fencing | common_pb2.Fence | None = None,
        timeout: float | None = None,
    ) -> int:
        """Store one Yjs update; returns its etcd revision once it is durable."""
        request = sessions_pb2.SessionsPushRequest(
            name=name, update=update, request_id=request_id or _request_id()
        )
        if fence is not None:
            request.fence.CopyFrom(_fence(fence))
        response = await self._t.unary(calls.SESSIONS_PUSH, request, timeout=timeout)
        return int(response.header.revision)

    async def subscribe(
        self, name: str, state_vector: bytes = b"", *, presence: bool = False
    ) -> AsyncGenerator[SessionEvent, None]:
        """One stream on one replica: first an UpdateEvent with what state_vector lacks,
        then every later change in revision order. It ends with the stream (raising the
        typed error); `session()` is the subscription that resumes on another replica."""
        request = sessions_pb2.SessionsSubscribeRequest(
            name=name, state_vector=state_vector, presence=presence
        )
        async for response in self._t.stream(calls.SESSIONS_SUBSCRIBE, request):
            event = _event(response)
            if event is not None:
                yield event

    async def read(self, name: str, *, timeout: float | None = None) -> SessionState:
        request = sessions_pb2.SessionsReadRequest(name=name)
        response = await self._t.unary(calls.SESSIONS_READ, request, timeout=timeout)
        return SessionState(
            response.header.revision,
            SessionInfo._from(response.session),
            response.snapshot,
            response.state_vector,
            json.loads(response.json) if response.json else {},
            [Presence._from(p) for p in response.presence],
            response.snapshot_omitted,
        )

    async def apply(
        self,
        name: str,
        *operations: sessions_pb2.Operation,
        request_id: str | None = None,
        fence: _Fencing | common_pb2.Fence | None = None,
        timeout: float | None = None,
    ) -> ApplyResult:
        """Run operations (see accord.client.ops) on the coordinator, in order, all or
        none, stored and broadcast as one update."""
        request = sessions_pb2.SessionsApplyRequest(
            name=name, operations=operations, request_id=request_id or _request_id()
        )
        if fence is not None:
            request.fence.CopyFrom(_fence(fence))
        response = await self._t.unary(calls.SESSIONS_APPLY, request, timeout=timeout)
        return ApplyResult(response.header.revision, response.update)

    async def set_presence(
        self,
        name: str,
        lease: _HasId | int,
        state: Mapping[str, Any] | None,
        *,
        client_id: int = 0,
        timeout: float | None = None,
    ) -> Presence:
        """Announce this agent's state in the session (None clears it). It lasts as long
        as the lease; client_id 0 derives one from the lease."""
        request = sessions_pb2.SetPresenceRequest(
            name=name,
            lease_id=_lease(lease),
            client_id=client_id,
            state_json=json.dumps(dict(state), separators=(",", ":")) if state is not None else "",
        )
        response = await self._t.unary(calls.SESSIONS_SET_PRESENCE, request, timeout=timeout)
        return Presence._from(response.presence)

    def synced(
        self,
        name: str,
        *,
        create: bool = True,
        roots: Mapping[str, RootKind | str] | None = None,
        doc: Doc[Any] | None = None,
        presence: bool = False,
        fence: _Fencing | common_pb2.Fence | None = None,
    ) -> SyncedSession:
        """A local pycrdt Doc kept in sync with the session:
        ``async with accord.sessions.synced("plan") as live: live.doc ...``."""
        return SyncedSession(
            self, name, create=create, roots=roots, doc=doc, presence=presence, fence=fence
        )

    async def flush(self, doc: Doc[Any] | SyncedSession, timeout: float | None = None) -> int:
        """Wait until every change made so far to a synced doc is durable; returns the
        revision of the last acknowledged push (0 if none)."""
        live = doc if isinstance(doc, SyncedSession) else self._live.get(id(doc))
        if live is None:
            raise ValueError("this document is not kept in sync by an open session")
        return await live.flush(timeout)


class SyncedSession:
    """A pycrdt Doc kept equal to a session. Remote updates are applied in a transaction
    whose origin is this object, so they are not pushed back; local changes are queued,
    merged, and pushed one batch at a time with a request_id kept across retries.

    Local changes may be made on another thread than the event loop's (as through the
    blocking client): they are handed to the loop thread, in order. Remote updates are
    applied on the loop thread, so keep local transactions short there."""

    name: str
    doc: Doc[Any]
    info: SessionInfo | None
    # The newest revision the document reflects (from the subscription).
    revision: int
    # The revision of the last local change acknowledged as durable.
    acked_revision: int
    # Participants' presence by client id (with presence=True).
    presence: dict[int, Presence]
    # Set when syncing stopped for good (session deleted, fence lost, bad update); never
    # because replicas are out of reach: it keeps trying until they are back.
    error: AccordError | None

    def __init__(
        self,
        sessions: AsyncSessions,
        name: str,
        *,
        create: bool,
        roots: Mapping[str, RootKind | str] | None,
        doc: Doc[Any] | None,
        presence: bool,
        fence: _Fencing | common_pb2.Fence | None,
    ) -> None:
        self._sessions = sessions
        self._t = sessions._t
        self.name = name
        self.doc = doc if doc is not None else Doc()
        self.info = None
        self.revision = 0
        self.acked_revision = 0
        self.presence = {}
        self.error = None
        self._create = create
        self._roots = roots
        self._with_presence = presence
        self._fence = _fence(fence) if fence is not None else None
        self._origin = object()
        self._origin_hash = hash(self._origin)
        self._pending: list[bytes] = []
        self._queued = 0  # local changes seen
        self._acked = 0  # local changes durable
        self._progress = asyncio.Event()
        self._push_wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._observer: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop  # set by start(), on the loop's thread
        self._loop_thread = 0
        self._tasks: list[asyncio.Task[None]] = []

    # --- waiting --------------------------------------------------------------------

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _until(self, done: Callable[[], bool], timeout: float | None) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                if self.error is not None:
                    raise self.error
                await self._progress.wait()

    async def flush(self, timeout: float | None = None) -> int:
        """Wait until every local change made before this call is durable in etcd."""
        target = self._queued
        await self._until(lambda: self._acked >= target, timeout)
        return self.acked_revision

    async def changed(self, timeout: float | None = None) -> None:
        """Wait for the next change: a remote update or presence change applied, or a
        local change acknowledged."""
        if self.error is not None:
            raise self.error
        progress = self._progress
        async with asyncio.timeout(timeout):
            await progress.wait()
        if self.error is not None:
            raise self.error

    async def wait_for(self, revision: int, timeout: float | None = None) -> None:
        """Wait until the document reflects every update up to revision (e.g. one that
        another agent's push returned)."""
        await self._until(lambda: self.revision >= revision, timeout)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> Doc[Any]:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        info = await self._sessions.open(self.name, must_exist=not self._create, roots=self._roots)
        self.info = info
        if self.doc.get_state() != b"\x00":  # a doc brought along: the server may lack it
            self._pending.append(self.doc.get_update())
            self._queued += 1
        self._observer = self.doc.observe(self._on_local)
        self._sessions._live[id(self.doc)] = self
        self._tasks = [
            # Background sync outlives any ambient deadline of the call that started it.
            asyncio.create_task(
                self._follow(),
                name=f"accord-session-follow:{self.name}",
                context=deadlines.detached(),
            ),
            asyncio.create_task(
                self._push_loop(),
                name=f"accord-session-push:{self.name}",
                context=deadlines.detached(),
            ),
        ]
        self._push_wake.set()
        try:
            await self._until(self._ready.is_set, self._t.timeout)
        except BaseException:
            await self.stop()
            raise
        return self.doc

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._observer is not None:
            self.doc.unobserve(self._observer)
            self._observer = None
        self._sessions._live.pop(id(self.doc), None)

    async def close(self, flush: bool = True) -> None:
        """Push what is pending (waiting at most the client's timeout), then stop."""
        try:
            if flush and self.error is None:
                await self.flush(self._t.timeout)
        finally:
            await self.stop()

    async def __aenter__(self) -> SyncedSession:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        with contextlib.suppress(AccordError, TimeoutError):  # keep the body's error
            await self.close()

    # --- remote updates -------------------------------------------------------------

    def _fail(self, error: AccordError) -> None:
        if self.error is None:
            self.error = error
        self._notify()

    async def _follow(self) -> None:
        failures = 0
        while self.error is None:
            try:
                first = True
                events = self._sessions.subscribe(
                    self.name, self.doc.get_state(), presence=self._with_presence
                )
                async for event in events:
                    failures = 0
                    if first:
                        first = False
                        self.presence.clear()  # the current set follows
                    if not self._on_remote(event):
                        return
            except _TRANSIENT as exc:
                failures += 1
                if failures > _MAX_QUIET_FAILURES and not isinstance(exc, _OUT_OF_REACH):
                    self._fail(exc)
                    return
            except QuotaExceededError as exc:  # subscribe again when the server says
                failures += 1
                wait = pushback(exc, self._t.timeout)
                if wait is None or failures > _MAX_QUIET_FAILURES:
                    self._fail(exc)
                    return
                await asyncio.sleep(wait)
                continue
            except AccordError as exc:  # deleted, or refused for good
                self._fail(exc)
                return
            else:
                failures += 1  # the replica ended the stream (shutting down)
            await asyncio.sleep(self._t.retry.backoff(min(failures, 5)))

    def _on_remote(self, event: SessionEvent) -> bool:
        if isinstance(event, UpdateEvent):
            try:
                if event.update:
                    with self.doc.transaction(origin=self._origin):
                        self.doc.apply_update(event.update)
            except Exception as exc:  # e.g. a transaction left open across an await
                self._fail(AccordError(f"could not apply an update of {self.name!r}: {exc}"))
                return False
            self.revision = max(self.revision, event.revision)
            self._ready.set()
        elif isinstance(event, PresenceEvent):
            self.presence[event.presence.client_id] = event.presence
        else:
            self.presence.pop(event.client_id, None)
        self._notify()
        return True

    # --- local updates --------------------------------------------------------------

    def _on_local(self, event: TransactionEvent) -> None:
        origin = cast(_Committed, event).transaction.origin()
        if origin == self._origin_hash or event.update == b"\x00\x00":
            return
        if threading.get_ident() == self._loop_thread:
            self._queue(event.update)
        else:  # changed on another thread: the loop thread owns the queue
            self._loop.call_soon_threadsafe(self._queue, event.update)

    def _queue(self, update: bytes) -> None:
        self._pending.append(update)
        self._queued += 1
        self._push_wake.set()

    async def _push_loop(self) -> None:
        while True:
            await self._push_wake.wait()
            self._push_wake.clear()
            while self._pending and self.error is None:
                pending = self._pending
                batch = pending[0] if len(pending) == 1 else merge_updates(*pending)
                covers = self._queued
                self._pending.clear()
                revision = await self._push_until_acked(batch)
                if revision is None:
                    return
                self._acked = covers
                self.acked_revision = max(self.acked_revision, revision)
                self._notify()

    async def _push_until_acked(self, update: bytes) -> int | None:
        """Push one batch, resending it under the same request_id after transient
        failures so it is stored exactly once; None when it was refused for good."""
        request_id = _request_id()
        failures = 0
        while True:
            try:
                return await self._sessions.push(
                    self.name, update, request_id=request_id, fence=self._fence
                )
            except _TRANSIENT as exc:
                failures += 1
                if failures > _MAX_QUIET_FAILURES and not isinstance(exc, _OUT_OF_REACH):
                    self._fail(exc)
                    return None
            except QuotaExceededError as exc:  # the same request id, when the server says
                failures += 1
                wait = pushback(exc, self._t.timeout)
                if wait is None or failures > _MAX_QUIET_FAILURES:
                    self._fail(exc)
                    return None
                await asyncio.sleep(wait)
                continue
            except AccordError as exc:
                self._fail(exc)
                return None
            await asyncio.sleep(self._t.retry.backoff(min(failures, 5)))
