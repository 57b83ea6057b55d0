"""One session loaded in a replica: its Yjs document, kept equal to what etcd holds.

The document changes only by applying what the session's etcd watch delivers, in
revision order, so at any moment it is exactly "the snapshot plus every logged update up
to applied_revision". That is what makes compaction safe: a snapshot taken from the
document covers precisely the log entries created up to that revision, and only those are
deleted. Updates are idempotent, so re-applying an entry a snapshot already holds (a
resync, a slow deletion) changes nothing.

etcd layout, per incarnation (keyspace.SessionData):
  alive                     written at creation, deleted with the session
  log\\0{id}                 one accepted Yjs update (raw bytes)
  snap\\0{rev}\\0{sha}\\0{i}    chunk i of the snapshot covering every update up to rev
  presence\\0{client:08x}    an accord.v1.Presence, attached to its lease
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import random
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from pycrdt import Doc, get_update, merge_updates

from accord.coordinator import logs
from accord.coordinator.observability import accord_metrics
from accord.coordinator.sessions import breaks, compaction, sizes
from accord.coordinator.sessions.ops import LibraryFailure, guarded, kinds_of
from accord.coordinator.sessions.subscribers import Event, Merges, Subscriber
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import AccordError, BackendUnavailable, Compacted, NotFound
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.keyspace import SessionData
from accord.coordinator.substrate.txn import read, watch
from accord.v1 import records_pb2, sessions_pb2

_log = logs.get("accord.sessions")

# Compact once the log (keys and values) holds more than this and more than the snapshot.
COMPACT_MIN_LOG_BYTES = 16 * 1024
COMPACT_MAX_LOG_ENTRIES = 2000
# Keys per read when loading: snapshot chunks are up to 512 KiB, and a page must stay
# well under the etcd channel's 64 MiB message limit.
LOAD_PAGE = 64
_DELETE = 1  # mvccpb.Event.EventType


@dataclass(slots=True)
class LogEntry:
    create_revision: int
    size: int
    # Set while the document holds the update only as pending (it arrived before what
    # it builds on): the document's encoding leaves pending structs out, so a snapshot
    # does not cover this entry until it integrates.
    pending: bytes | None = None


@dataclass(slots=True)
class SessionDoc:
    etcd: Etcd
    keys: SessionData
    meta_key: bytes  # the session's record
    namespace: str
    name: str
    created_revision: int
    incarnation: int
    doc: Doc[Any] = field(default_factory=Doc)
    applied_revision: int = 0
    log: dict[bytes, LogEntry] = field(default_factory=dict)
    log_bytes: int = 0
    snapshot_revision: int = 0
    snapshot_bytes: int = 0
    # Snapshot chunks by key; those not of the current snapshot are garbage to delete.
    snapshot_keys: dict[bytes, int] = field(default_factory=dict)
    # Trace keys of updates (keys.trace) may be in etcd: compaction deletes them.
    traced: bool = False
    # An upper bound of the document's encoded size (sizes.py): exact when measured, then
    # grown by each applied update's size; and the bytes of this replica's writes in flight.
    size_bound: int = 0
    reserved: int = 0
    _size_exact: bool = False
    presence: dict[int, sessions_pb2.Presence] = field(default_factory=dict)
    subscribers: set[Subscriber] = field(default_factory=set)
    merges: Merges = field(default_factory=Merges)  # shared by the subscribers
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0  # calls in progress; the session is not unloaded while > 0
    gone: bool = False
    ops_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The Yjs client id server-side operations run as here (one per loaded session).
    ops_client_id: int = field(default_factory=lambda: random.getrandbits(32))
    on_gone: Any = None  # called once when the session disappears
    _waiters: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _compacting: asyncio.Task[bool] | None = None
    _failed_updates: int = 0
    _pending: set[bytes] = field(default_factory=set)
    _inferred: dict[str, int] = field(default_factory=dict)

    # --- layout -------------------------------------------------------------------

    @property
    def prefix(self) -> bytes:
        return self.keys.prefix

    @property
    def alive_key(self) -> bytes:
        return self.keys.alive

    # --- loading and following ----------------------------------------------------

    async def load(self) -> None:
        """Read everything stored at one revision, then follow the watch from there."""
        revision = await self._read_all()
        self.applied_revision = revision
        self._task = asyncio.create_task(self._follow())

    async def _read_all(self) -> int:
        """Apply the stored state onto the document; returns the revision read at."""
        prefix = self.prefix
        request = read(prefix, prefix=True)
        request.limit = LOAD_PAGE
        kvs: list[Any] = []
        while True:
            page = await self.etcd.range(request)
            request.revision = request.revision or page.header.revision
            kvs.extend(page.kvs)
            if not page.more or not page.kvs:
                break
            request.key = page.kvs[-1].key + b"\x00"
        revision = request.revision
        if not any(kv.key == self.alive_key for kv in kvs):
            raise self.not_found()
        record = await self._record(revision)
        self.log.clear()
        self._pending.clear()
        self.log_bytes = 0
        self.size_bound = 0
        self._size_exact = False
        self.snapshot_keys.clear()
        self.presence.clear()
        self.snapshot_revision = record.snapshot_revision
        chunks = []
        current = (
            self.keys.snapshot(record.snapshot_revision) + record.snapshot_sha256[:8].hex().encode()
        )
        log_kvs = []
        for kv in kvs:
            part = kv.key[len(prefix) :]
            if part.startswith(b"snap\x00"):
                self.snapshot_keys[kv.key] = len(kv.value)
                if kv.key.startswith(current + b"\x00"):
                    chunks.append((kv.key, kv.value))
            elif part.startswith(b"log\x00"):
                log_kvs.append(kv)
            elif part.startswith(b"trace\x00"):
                self.traced = True
            elif part.startswith(b"presence\x00"):
                self._on_presence(kv)
        if record.snapshot_revision:
            state = b"".join(value for _, value in sorted(chunks))
            if hashlib.sha256(state).digest() != record.snapshot_sha256:
                raise AccordError(
                    f"session {self.name!r}: the snapshot at revision "
                    f"{record.snapshot_revision} is incomplete or corrupt in etcd"
                )
            self._apply(state)
            self.snapshot_bytes = len(state)
            self.size_bound = len(state)
        for kv in sorted(log_kvs, key=lambda kv: kv.mod_revision):
            # Entries the snapshot covers are applied too (a no-op): one that was pending
            # when the snapshot was taken is not in it.
            self._add_entry(kv)
        self._settle_pending()
        return int(revision)

    def _add_entry(self, kv: Any) -> bool:
        entry = LogEntry(kv.create_revision, len(kv.key) + len(kv.value))
        self.log[kv.key] = entry
        self.log_bytes += entry.size
        if not self._apply(kv.value):
            return False
        self.size_bound += len(kv.value)
        self._size_exact = False
        if not self._integrated(kv.value):
            entry.pending = kv.value
            self._pending.add(kv.key)
        return True

    def _integrated(self, update: bytes) -> bool:
        """Whether the document holds every struct of update (none left pending): what
        update has beyond the document's state vector has no client groups. (An update's
        own state vector will not do: it counts a client only from clock 0, so an update
        continuing a client's clocks has an empty one.)"""
        return get_update(update, self.doc.get_state())[:1] == b"\x00"

    def encoded_size(self) -> int:
        """The document's encoded size (one encoding, then cached until it changes)."""
        if not self._size_exact:
            self.size_bound = len(self.state_update())
            self._size_exact = True
        return self.size_bound

    def root_kinds(self, state: bytes, declared: dict[str, int]) -> dict[str, int]:
        """Every root's kind: declared, else inferred once (a root keeps the kind its first
        content gave it, so inferences are remembered while the session is loaded)."""
        kinds = kinds_of(state, {**self._inferred, **declared})
        self._inferred.update(kinds)
        return kinds

    def state_update(self, state_vector: bytes = b"\x00") -> bytes:
        """What state_vector lacks, pending updates included (the document's own encoding
        leaves them out until what they build on arrives)."""
        update = self.doc.get_update(state_vector or b"\x00")
        pending = [e.pending for k in self._pending if (e := self.log.get(k)) and e.pending]
        return merge_updates(update, *pending) if pending else update

    def _settle_pending(self) -> None:
        for key in list(self._pending):
            entry = self.log.get(key)
            if entry is None or entry.pending is None or self._integrated(entry.pending):
                if entry is not None:
                    entry.pending = None
                self._pending.discard(key)

    async def _record(self, revision: int) -> records_pb2.SessionRecord:
        found = await self.etcd.range(read(self.meta_key, revision=revision))
        if not found.kvs or found.kvs[0].create_revision != self.created_revision:
            raise self.not_found()
        return records_pb2.SessionRecord.FromString(found.kvs[0].value)

    def not_found(self) -> NotFound:
        return NotFound(
            f"session {self.name!r} does not exist in namespace {self.namespace!r}",
            metadata={"session": self.name},
        )

    def _apply(self, update: bytes) -> bool:
        try:
            guarded(lambda: self.doc.apply_update(update))
            return True
        except LibraryFailure as exc:  # checked on the way in; never let one entry stop us
            self._failed_updates += 1
            _log.warning(
                "a stored session update failed to apply", session=self.name, error=str(exc)
            )
            return False

    async def _follow(self) -> None:
        calls.current.set(calls.BACKGROUND)
        delay = 0.05
        while not self.gone:
            create = watch(self.prefix, prefix=True, start_revision=self.applied_revision + 1)
            try:
                async for response in self.etcd.watch(create):
                    delay = 0.05
                    self._on_events(response.events)
                    if self.gone:
                        return
            except Compacted:
                await self._resync()
            except AccordError as exc:
                _log.info("session watch broke; resuming", session=self.name, error=exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:  # a bug must not silently freeze the session: start over
                _log.exception("session follower failed; reloading", session=self.name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                with contextlib.suppress(AccordError):
                    await self._resync()

    async def _resync(self) -> None:
        """The watch fell behind etcd's compaction: re-read everything (updates are
        idempotent) and send subscribers what changed."""
        before = self.doc.get_state()
        known = dict(self.presence)
        try:
            revision = await self._read_all()
        except NotFound:
            self._disappear()
            return
        diff = self.doc.get_update(before)
        self.applied_revision = revision
        if len(diff) > sizes.MAX_MERGED_BYTES:  # too big for one message: start over
            self.end_streams("the session changed too much at once to send; resubscribe")
        self._broadcast(Event(revision=revision, update=diff))
        for client_id, presence in self.presence.items():
            if known.get(client_id) != presence:
                self._broadcast(Event(revision=revision, presence=presence))
        for client_id, old in known.items():
            if client_id not in self.presence:
                gone = sessions_pb2.PresenceGone(
                    client_id=client_id, clock=revision, agent_id=old.agent_id
                )
                self._broadcast(Event(revision=revision, presence_gone=gone))
        self._release_waiters()

    def _on_events(self, events: Any) -> None:
        prefix_len = len(self.prefix)
        # Trace contexts by log entry id: each is written in its entry's transaction, just
        # before it, so it comes in the same watch response.
        traces: dict[bytes, bytes] = {}
        arrived = accord_metrics.update_arrival()
        for event in events:
            kv = event.kv
            part = kv.key[prefix_len:]
            deleted = event.type == _DELETE
            if part.startswith(b"trace\x00"):
                if not deleted:
                    traces[part[len(b"trace\x00") :]] = kv.value
                    self.traced = True
            elif part.startswith(b"log\x00"):
                if deleted:
                    entry = self.log.pop(kv.key, None)
                    if entry is not None:
                        self.log_bytes -= entry.size
                elif kv.key not in self.log:
                    if self._add_entry(kv):
                        update = Event(revision=kv.mod_revision, update=kv.value)
                        traced = traces.pop(part[len(b"log\x00") :], None)
                        if traced is not None:  # its writer's trace context
                            with contextlib.suppress(DecodeError):  # written only by us
                                update.trace_context.MergeFromString(traced)
                        if not (breaks.DROP_FANOUT and breaks.drop_this_update()):  # tests only
                            self._broadcast(update, arrived)
                    if self._pending:
                        self._settle_pending()
            elif part.startswith(b"presence\x00"):
                if deleted:
                    client_id = int(part[len(b"presence\x00") :], 16)
                    old = self.presence.pop(client_id, None)
                    if old is not None:
                        gone = sessions_pb2.PresenceGone(
                            client_id=client_id, clock=kv.mod_revision, agent_id=old.agent_id
                        )
                        self._broadcast(Event(revision=kv.mod_revision, presence_gone=gone))
                else:
                    presence = self._on_presence(kv)
                    if presence is not None:
                        self._broadcast(Event(revision=kv.mod_revision, presence=presence))
            elif part.startswith(b"snap\x00"):
                if deleted:
                    self.snapshot_keys.pop(kv.key, None)
                else:
                    self.snapshot_keys[kv.key] = len(kv.value)
            elif part == b"alive" and deleted:
                self._disappear()
                return
            self.applied_revision = max(self.applied_revision, kv.mod_revision)
        self._release_waiters()
        self._maybe_compact()

    def _on_presence(self, kv: Any) -> sessions_pb2.Presence | None:
        try:
            presence = sessions_pb2.Presence.FromString(kv.value)
        except Exception:  # written only by us; skip rather than stop
            return None
        presence.clock = kv.mod_revision
        presence.lease_id = kv.lease
        self.presence[presence.client_id] = presence
        return presence

    def _broadcast(self, event: Event, arrived: float = 0.0) -> None:
        """Offer event to every subscriber; arrived: when its update reached this replica
        (accord_metrics.update_arrival())."""
        kind = event.WhichOneof("event")
        for subscriber in list(self.subscribers):
            subscriber.offer(event, kind, arrived)

    def _disappear(self) -> None:
        if self.gone:
            return
        self.gone = True
        error = self.not_found()
        for subscriber in list(self.subscribers):
            subscriber.end(error)
        self.subscribers.clear()
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()
        if self.on_gone is not None:
            self.on_gone(self)

    # --- waiting for our own writes -----------------------------------------------

    async def caught_up(self, revision: int, timeout: float) -> None:
        """Return once the document holds everything up to revision (or after timeout:
        the write is durable either way, only not yet visible here)."""
        if self.applied_revision >= revision or self.gone:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, id(future), future))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), timeout)

    def _release_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.applied_revision:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    async def newest_revision(self) -> int:
        """The newest revision of anything stored for the session (a linearizable read),
        so a read here can wait to see what any replica acknowledged before it."""
        request = read(self.prefix, prefix=True, keys_only=True)
        request.sort_order, request.sort_target = request.DESCEND, request.MOD
        request.limit = 1
        found = await self.etcd.range(request)
        return int(found.kvs[0].mod_revision) if found.kvs else 0

    async def fresh(self, timeout: float = 5.0) -> None:
        await self.caught_up(await self.newest_revision(), timeout)
        if self.gone:
            raise self.not_found()

    # --- subscribers --------------------------------------------------------------

    def subscribe(self, state_vector: bytes, presence: bool) -> Subscriber:
        """The first event brings what state_vector lacks; nothing can slip in between."""
        update = self.state_update(state_vector)
        sizes.require_fits(self.name, len(update), "the update a subscription starts with")
        subscriber = Subscriber(presence, self.merges)
        subscriber.offer(Event(revision=self.applied_revision, update=update))
        for item in self.presence.values():
            subscriber.offer(Event(revision=item.clock, presence=item))
        self.subscribers.add(subscriber)
        return subscriber

    # --- compaction ---------------------------------------------------------------

    def _covered(self) -> int:
        return sum(
            1
            for e in self.log.values()
            if e.create_revision <= self.applied_revision and e.pending is None
        )

    def worth_compacting(self) -> bool:
        """On unload: fold the log into one snapshot, unless it is a lone entry and there is
        no snapshot yet (that entry already is the whole document)."""
        busy = self._compacting is not None and not self._compacting.done()
        covered = self._covered()
        return not busy and (covered > 1 or (covered == 1 and bool(self.snapshot_keys)))

    async def compact_now(self) -> bool:
        """Compact as the session's one compaction in flight (on unload), so the watch
        does not start another beside it that close() would cut off halfway."""
        if self._compacting is None or self._compacting.done():
            self._compacting = asyncio.create_task(self.compact())
        return await self._compacting

    def _maybe_compact(self) -> None:
        if self._compacting is not None and not self._compacting.done():
            return
        chunks = -(-self.snapshot_bytes // compaction.SNAPSHOT_CHUNK_BYTES)
        garbage = len(self.snapshot_keys) > max(1, chunks)
        if (
            self.log_bytes > max(COMPACT_MIN_LOG_BYTES, self.snapshot_bytes)
            or len(self.log) > COMPACT_MAX_LOG_ENTRIES
            or garbage
        ) and self._covered():  # a scan of the log: only once a threshold is crossed
            self._compacting = asyncio.create_task(self.compact())

    async def compact(self) -> bool:
        """Replace the log up to applied_revision by one snapshot (compaction.py)."""
        return await compaction.compact(self)

    async def close(self) -> None:
        self.gone = True
        for task in (self._task, self._compacting):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.end_streams()
        for _, _, future in self._waiters:
            if not future.done():
                future.set_result(None)
        self._waiters.clear()

    def end_streams(
        self, why: str = "this coordinator replica is shutting down; resubscribe"
    ) -> None:
        """End every subscription with UNAVAILABLE: its client resubscribes (elsewhere, or
        from its own state vector)."""
        for subscriber in list(self.subscribers):
            subscriber.end(BackendUnavailable(why))
        self.subscribers.clear()
