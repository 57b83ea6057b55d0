"""Versioned shared memory, as an agent uses it.

Every write may carry a precondition (`expect=`); `update()` turns read-modify-write into
a conflict-free one-liner. Writes carry a request_id the client makes up, so a retry
after a lost answer never applies twice, whichever replica it lands on.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Protocol

from accord.client import calls
from accord.client.batching import KVBatches
from accord.client.errors import (
    AccordError,
    ConditionFailedError,
    DeadlineExceededError,
    QuotaExceededError,
    UnavailableError,
    reason_name,
)
from accord.client.retry import pushback
from accord.client.trace_context import TraceContext
from accord.client.transport import Transport
from accord.v1 import common_pb2, kv_pb2


@dataclass(frozen=True, slots=True)
class Provenance:
    agent_id: str
    written_at: datetime | None
    request_id: str
    # The authenticated principal behind agent_id ("" when the service runs without auth).
    principal: str = ""
    # The W3C trace context of the call that wrote (None: it sent none); see link().
    trace_context: TraceContext | None = None

    @staticmethod
    def _from(msg: common_pb2.Provenance) -> Provenance:
        at = (
            datetime.fromtimestamp(msg.written_at.seconds + msg.written_at.nanos / 1e9, UTC)
            if msg.HasField("written_at")
            else None
        )
        return Provenance(
            msg.agent_id,
            at,
            msg.request_id,
            msg.principal,
            TraceContext._from(msg.trace_context),
        )


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    written_by: Provenance

    @staticmethod
    def _from(msg: kv_pb2.KeyValue) -> KeyValue:
        return KeyValue(
            msg.key,
            msg.value,
            msg.create_revision,
            msg.mod_revision,
            msg.version,
            Provenance._from(msg.written_by),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Expect:
    """A precondition on one key; set exactly one field."""

    mod_revision: int | None = None
    version: int | None = None
    absent: bool = False
    exists: bool = False

    def _to_proto(self) -> kv_pb2.Precondition:
        chosen = [self.mod_revision is not None, self.version is not None, self.absent, self.exists]
        if sum(chosen) != 1:
            raise ValueError("Expect needs exactly one of mod_revision, version, absent, exists")
        if self.mod_revision is not None:
            return kv_pb2.Precondition(mod_revision=self.mod_revision)
        if self.version is not None:
            return kv_pb2.Precondition(version=self.version)
        if self.absent:
            return kv_pb2.Precondition(must_not_exist=True)
        return kv_pb2.Precondition(must_exist=True)


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes | str
    # Attach the key to this lease: it is deleted when the lease ends.
    lease_id: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    revision: int
    kv: KeyValue | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class DeleteResult:
    revision: int
    deleted: bool
    prev: KeyValue | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class TxnResult:
    revision: int
    # Per op, in order: the key as written (put) or before deletion (delete, if it existed).
    kvs: list[KeyValue | None]
    replayed: bool


@dataclass(frozen=True, slots=True)
class Page:
    revision: int
    kvs: list[KeyValue]
    next_page_token: str
    total: int


class EventType(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    kv: KeyValue
    prev: KeyValue | None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision

    @property
    def trace_context(self) -> TraceContext | None:
        """The writer's trace context (a put's; a delete's event carries none)."""
        return self.kv.written_by.trace_context


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    type: EventType
    revision: int
    kv: KeyValue
    changed_by: Provenance


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[HistoryEntry]
    next_before_revision: int
    truncated_by_compaction: bool


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _request_id() -> str:
    return uuid.uuid4().hex


class _Fencing(Protocol):
    def fence(self) -> common_pb2.Fence: ...


def _fence(fence: _Fencing | common_pb2.Fence) -> common_pb2.Fence:
    """A Grant (anything with .fence()) or a Fence message."""
    return fence if isinstance(fence, common_pb2.Fence) else fence.fence()


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


def _lease(lease: _HasId | int | None) -> int:
    if lease is None:
        return 0
    return lease if isinstance(lease, int) else lease.id


class AsyncKV:
    def __init__(self, transport: Transport, coalescer: KVBatches | None = None) -> None:
        self._t = transport
        # Get, Put, Delete and Txn share messages with concurrent callers (batching.py).
        self._c = coalescer or KVBatches(None)

    def as_agent(self, agent_id: str) -> AsyncKV:
        """This client's KV acting as another agent (with auth, one its principal may act
        as, such as an agent a runtime's service principal hosts): the same channels,
        token and batches, so the KV calls of every agent a process hosts share messages,
        each written as its own agent."""
        return AsyncKV(self._t.as_agent(agent_id), self._c)

    async def get(
        self,
        key: str,
        *,
        serializable: bool = False,
        revision: int = 0,
        timeout: float | None = None,
    ) -> KeyValue | None:
        request = kv_pb2.GetRequest(
            key=key,
            revision=revision,
            consistency=kv_pb2.CONSISTENCY_SERIALIZABLE
            if serializable
            else kv_pb2.CONSISTENCY_LINEARIZABLE,
        )
        response = await self._c.get(request, timeout, self._t)
        return KeyValue._from(response.kv) if response.found else None

    async def list(
        self,
        prefix: str = "",
        *,
        limit: int = 0,
        page_token: str = "",
        keys_only: bool = False,
        revision: int = 0,
        timeout: float | None = None,
    ) -> Page:
        request = kv_pb2.ListRequest(
            prefix=prefix,
            limit=limit,
            page_token=page_token,
            keys_only=keys_only,
            revision=revision,
        )
        response = await self._t.unary(calls.KV_LIST, request, timeout=timeout)
        return Page(
            response.header.revision,
            [KeyValue._from(kv) for kv in response.kvs],
            response.next_page_token,
            response.total,
        )

    async def list_all(
        self, prefix: str = "", *, keys_only: bool = False, timeout: float | None = None
    ) -> builtins.list[KeyValue]:
        """Every key under prefix, as one consistent snapshot (timeout: per page)."""
        out: builtins.list[KeyValue] = []
        token = ""
        while True:
            page = await self.list(
                prefix, limit=1000, page_token=token, keys_only=keys_only, timeout=timeout
            )
            out.extend(page.kvs)
            if not page.next_page_token:
                return out
            token = page.next_page_token

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expect: Expect | None = None,
        request_id: str | None = None,
        return_current_on_failure: bool = False,
        fence: _Fencing | common_pb2.Fence | None = None,
        lease: _HasId | int | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        """Write key. expect: only if it holds (else ConditionFailedError); fence: only
        while that lock grant holds (else FencedError); lease: delete the key when that
        lease ends."""
        request = kv_pb2.PutRequest(
            key=key,
            value=_bytes(value),
            request_id=request_id or _request_id(),
            return_current_on_failure=return_current_on_failure,
            lease_id=_lease(lease),
        )
        if expect is not None:
            request.precondition.CopyFrom(expect._to_proto())
        if fence is not None:
            request.fence.CopyFrom(_fence(fence))
        try:
            response = await self._c.put(request, timeout, self._t)
        except ConditionFailedError as error:
            if return_current_on_failure:
                await self._fill_current(error, timeout)
            raise
        return WriteResult(response.header.revision, KeyValue._from(response.kv), response.replayed)

    async def delete(
        self,
        key: str,
        *,
        expect: Expect | None = None,
        request_id: str | None = None,
        return_current_on_failure: bool = False,
        fence: _Fencing | common_pb2.Fence | None = None,
        timeout: float | None = None,
    ) -> DeleteResult:
        request = kv_pb2.DeleteRequest(
            key=key,
            request_id=request_id or _request_id(),
            return_current_on_failure=return_current_on_failure,
        )
        if expect is not None:
            request.precondition.CopyFrom(expect._to_proto())
        if fence is not None:
            request.fence.CopyFrom(_fence(fence))
        try:
            response = await self._c.delete(request, timeout, self._t)
        except ConditionFailedError as error:
            if return_current_on_failure:
                await self._fill_current(error, timeout)
            raise
        prev = KeyValue._from(response.prev_kv) if response.HasField("prev_kv") else None
        return DeleteResult(response.header.revision, response.deleted, prev, response.replayed)

    async def txn(
        self,
        checks: Mapping[str, Expect],
        ops: Sequence[Put | Delete],
        *,
        request_id: str | None = None,
        return_current_on_failure: bool = False,
        fences: Sequence[_Fencing | common_pb2.Fence] = (),
        timeout: float | None = None,
    ) -> TxnResult:
        """All ops apply, at one revision, if every check holds; otherwise none do and
        ConditionFailedError lists every failed check."""
        request = kv_pb2.TxnRequest(
            checks=[kv_pb2.TxnCheck(key=k, precondition=e._to_proto()) for k, e in checks.items()],
            request_id=request_id or _request_id(),
            return_current_on_failure=return_current_on_failure,
            fences=[_fence(f) for f in fences],
        )
        for op in ops:
            if isinstance(op, Put):
                request.ops.add(
                    put=kv_pb2.TxnPut(key=op.key, value=_bytes(op.value), lease_id=op.lease_id)
                )
            else:
                request.ops.add(delete=kv_pb2.TxnDelete(key=op.key))
        try:
            response = await self._c.txn(request, timeout, self._t)
        except ConditionFailedError as error:
            if return_current_on_failure:
                await self._fill_current(error, timeout)
            raise
        await self._fill_omitted(request, response, timeout)
        kvs = [KeyValue._from(r.kv) if r.HasField("kv") else None for r in response.results]
        return TxnResult(response.revision, kvs, response.replayed)

    async def _fill_omitted(
        self, request: kv_pb2.TxnRequest, response: kv_pb2.TxnResponse, timeout: float | None
    ) -> None:
        """Fill in the values the service left out of a Txn's results (to stay under a
        standard client's 4 MiB): a put's is the value sent, a deleted key's is read as of
        just before the transaction. One that etcd has compacted since stays out."""
        for op, result in zip(request.ops, response.results, strict=True):
            if not result.value_omitted:
                continue
            if op.WhichOneof("op") == "put":
                result.kv.value = op.put.value
                continue
            get = kv_pb2.GetRequest(key=result.kv.key, revision=response.revision - 1)
            try:
                found = await self._t.unary(calls.KV_GET, get, timeout=timeout)
            except AccordError:
                continue
            if found.found and found.kv.mod_revision == result.kv.mod_revision:
                result.kv.value = found.kv.value

    async def _fill_current(self, error: ConditionFailedError, timeout: float | None) -> None:
        """Fill in the current values the service left out of a CONDITION_FAILED (too
        large for an error's trailers): each read as of the revision its check was
        evaluated at. One that etcd has compacted since stays out (current unset,
        current_value_omitted still says why)."""
        for failure in error.failures:
            if not failure.current_value_omitted or failure.HasField("current"):
                continue
            request = kv_pb2.GetRequest(key=failure.key, revision=failure.revision)
            try:
                response = await self._t.unary(calls.KV_GET, request, timeout=timeout)
            except AccordError:
                continue
            if response.found and response.kv.mod_revision == failure.current_mod_revision:
                failure.current.CopyFrom(response.kv)

    async def update(
        self,
        key: str,
        fn: Callable[[bytes | None], bytes | str | Awaitable[bytes | str]],
        *,
        max_attempts: int = 100,
        timeout: float | None = None,
    ) -> WriteResult:
        """Read key, compute fn(current value or None), write it only if nobody wrote the
        key in between; on a conflict, read again and retry. No update is ever lost."""
        for attempt in range(max_attempts):
            current = await self.get(key, timeout=timeout)
            produced = fn(current.value if current else None)
            new = await produced if inspect.isawaitable(produced) else produced
            expect = Expect(mod_revision=current.mod_revision) if current else Expect(absent=True)
            try:
                return await self._put_settled(key, new, expect, timeout)
            except ConditionFailedError:
                await asyncio.sleep(self._t.retry.backoff(min(attempt, 4)) / 4)
        raise ConditionFailedError(
            f"update of {key!r} kept conflicting after {max_attempts} attempts",
            reason=reason_name(common_pb2.ERROR_REASON_CONDITION_FAILED),
        )

    async def _put_settled(
        self,
        key: str,
        value: bytes | str,
        expect: Expect,
        timeout: float | None,
        resends: int = 3,
    ) -> WriteResult:
        """A conditional put whose outcome is known: after a deadline or an outage the same
        request_id is sent again, so a write that did apply is reported, not redone."""
        request_id = _request_id()
        for resend in range(resends + 1):
            try:
                return await self.put(
                    key, value, expect=expect, request_id=request_id, timeout=timeout
                )
            except (DeadlineExceededError, UnavailableError):
                if resend == resends:
                    raise
                await asyncio.sleep(self._t.retry.backoff(resend + 1))
        raise AssertionError("unreachable")

    async def history(
        self,
        key: str,
        *,
        limit: int = 0,
        before_revision: int = 0,
        timeout: float | None = None,
    ) -> HistoryPage:
        request = kv_pb2.HistoryRequest(key=key, limit=limit, before_revision=before_revision)
        response = await self._t.unary(calls.KV_HISTORY, request, timeout=timeout)
        entries = [
            HistoryEntry(
                EventType.DELETE if e.kind == kv_pb2.HistoryEntry.KIND_DELETE else EventType.PUT,
                e.revision,
                KeyValue._from(e.kv),
                Provenance._from(e.changed_by),
            )
            for e in response.entries
        ]
        return HistoryPage(entries, response.next_before_revision, response.truncated_by_compaction)

    def watch(
        self,
        key: str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
    ) -> Watch:
        """Events for key (or every key under it, with prefix=True) from start_revision on.
        Survives replica failures: it resumes where it stopped, on another replica."""
        return Watch(self._t, key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv)


class Watch:
    """An async iterator of WatchEvents that resumes across replica failures.

    `resume_revision` is where a new watch would continue: save it to resume after a
    process restart. It is exact on revision boundaries; saved in the middle of one
    transaction's events, it points at that transaction, whose events come again (a
    revision is etcd's unit of resumption). It advances only with events (an idle watch
    keeps its point). Raises CompactedError when the history needed to resume is gone:
    re-read the state, then watch from its revision + 1.
    """

    resume_revision: int

    def __init__(
        self,
        transport: Transport,
        key: str,
        *,
        prefix: bool,
        start_revision: int,
        prev_kv: bool,
        max_reconnects: int = 20,
    ) -> None:
        self._t = transport
        self._key = key
        self._prefix = prefix
        self._prev_kv = prev_kv
        self.resume_revision = start_revision
        self._max_reconnects = max_reconnects
        self._started = False
        self._events = self._run()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            item = await self._events.__anext__()
            if item is not None:
                return item

    async def start(self) -> int:
        """Wait until a replica has registered the watch; returns the first revision it
        will deliver. Writes made after start() returns are never missed."""
        while not self._started:
            await self._events.__anext__()
        return self.resume_revision

    async def aclose(self) -> None:
        await self._events.aclose()

    async def _run(self) -> AsyncGenerator[WatchEvent | None, None]:
        """Events, and None after each response. The resume point moves before each event
        is handed out. Every event of one revision comes in one response, which is handed
        out whole before the stream is read again, so a reconnect always resumes on a
        revision boundary: nothing lost, nothing repeated."""
        failures = 0
        while True:
            request = kv_pb2.WatchRequest(
                key=self._key,
                prefix=self._prefix,
                start_revision=self.resume_revision,
                prev_kv=self._prev_kv,
            )
            try:
                async for response in self._t.stream(calls.KV_WATCH, request):
                    failures = 0
                    events = response.events
                    for i, event in enumerate(events):
                        revision = event.kv.mod_revision
                        following = events[i + 1].kv.mod_revision if i + 1 < len(events) else None
                        if following is None:
                            self.resume_revision = response.resume_revision
                        elif following > revision:
                            self.resume_revision = revision + 1
                        else:  # more events of this transaction follow in this response
                            self.resume_revision = revision
                        yield _event(event)
                    self.resume_revision = response.resume_revision
                    self._started = True
                    yield None
            except (UnavailableError, DeadlineExceededError):
                # The replica, or its etcd, did not answer in time (a watch has no deadline
                # of its own): resume on another one, as after losing the replica.
                failures += 1
                if failures > self._max_reconnects:
                    raise
                await asyncio.sleep(self._t.retry.backoff(min(failures, 5)))
                continue
            except QuotaExceededError as refused:  # open again when the server says
                failures += 1
                wait = pushback(refused, self._t.timeout)
                if wait is None or failures > self._max_reconnects:
                    raise
                await asyncio.sleep(wait)
                continue
            # The server ended the stream (a replica shutting down): resume elsewhere.
            failures += 1
            if failures > self._max_reconnects:
                raise UnavailableError("the watch stream kept ending; no replica would hold it")


def _event(event: kv_pb2.WatchEvent) -> WatchEvent:
    return WatchEvent(
        EventType.DELETE if event.type == kv_pb2.WatchEvent.TYPE_DELETE else EventType.PUT,
        KeyValue._from(event.kv),
        KeyValue._from(event.prev_kv) if event.HasField("prev_kv") else None,
    )
