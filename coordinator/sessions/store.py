"""Collaborative sessions: Yjs documents merged as CRDTs, durable in etcd, any replica.

A session is a record (catalog.py) plus its data (doc.py). Every accepted update is one
etcd key written by a Txn that also checks the session still exists, the caller's fence
(if any) and its request_id (if any), so an acknowledged update is durable and applied at
most once. Replicas load a session on first use (loaded.py), follow its keys with an
etcd watch, serve every read from the document, and unload it when idle, so memory
follows active sessions.

Error handling: bad input, including updates that are not valid Yjs, is INVALID_ARGUMENT
and stores nothing; a missing session is NOT_FOUND; a lost fence is FENCED; a presence
client id held by another lease is CONDITION_FAILED (except for its own agent's
y-websocket connections, which take it over), and so is one that another writer keeps
changing. A retry gets the first answer. A write that would take the document past its
per-session limit is RESOURCE_EXHAUSTED with a QuotaFailure (sizes.py) and stores
nothing; so is a read whose answer would not fit one message to a standard client.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from accord.coordinator import logs
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.fencing import Fencing, fence_bytes
from accord.coordinator.sessions import breaks, sizes
from accord.coordinator.sessions import ops as session_ops
from accord.coordinator.sessions.catalog import check_name, info_of, now
from accord.coordinator.sessions.doc import SessionDoc
from accord.coordinator.sessions.loaded import LoadedSessions
from accord.coordinator.sessions.subscribers import Event
from accord.coordinator.substrate import Substrate, calls, strict_json
from accord.coordinator.substrate.errors import (
    ConditionFailed,
    FieldViolation,
    StoredFailure,
    invalid,
    require,
)
from accord.coordinator.substrate.group_commit import Committed
from accord.coordinator.substrate.idempotency import Prior, fingerprint
from accord.coordinator.substrate.limits import (
    MAX_ARRAY_VALUES,
    MAX_PATH_STEPS,
    check_request_id,
    require_counts,
)
from accord.coordinator.substrate.txn import (
    KeyValue,
    Op,
    Txn,
    delete,
    exists,
    first_kv,
    get,
    mod_is,
    put,
    read,
    txn,
)
from accord.v1 import common_pb2, records_pb2, sessions_pb2

_log = logs.get("accord.sessions")
T = TypeVar("T")

MAX_UPDATE_BYTES = 512 * 1024
MAX_OPERATIONS = 256
MAX_PRESENCE_BYTES = 8 * 1024
CATCH_UP_SECONDS = 5.0
PRESENCE_ATTEMPTS = 3  # reads and guarded writes of one presence key, when raced


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    info: sessions_pb2.SessionInfo
    update: bytes
    state_vector: bytes
    json: str
    presence: list[sessions_pb2.Presence]
    snapshot_omitted: bool


class SessionStore:
    def __init__(
        self,
        substrate: Substrate,
        leases: LeaseStore,
        fencing: Fencing,
        *,
        idle_seconds: float = 30.0,
        max_bytes: int = sizes.DEFAULT_SESSION_MAX_BYTES,
    ) -> None:
        """max_bytes: the per-session limit on encoded state (0: none)."""
        self._s = substrate
        self._max_bytes = max_bytes
        self._etcd = substrate.etcd
        self._leases = leases
        self._fencing = fencing
        self._loaded = LoadedSessions(substrate, idle_seconds)

    def end_streams(self) -> None:
        self._loaded.end_streams()

    async def close(self) -> None:
        await self._loaded.close()

    # --- reads --------------------------------------------------------------------

    async def sync(self, name: str, state_vector: bytes) -> tuple[int, bytes, bytes]:
        require(
            check_name("name", name) + session_ops.check_state_vector("state_vector", state_vector)
        )
        async with self._loaded.use(name) as session:
            await session.fresh()
            update = session.state_update(state_vector)
            vector = session.doc.get_state()
            sizes.require_fits(name, len(update) + len(vector), "this Sync's answer")
            return session.applied_revision, update, vector

    async def read(self, name: str) -> Snapshot:
        require(check_name("name", name))
        async with self._loaded.use(name) as session:
            if breaks.STALE_READS:  # a test-only bug (tests/faults): a stale cache
                return await breaks.stale_read(session.prefix, lambda: self._read(session, name))
            return await self._read(session, name)

    async def _read(self, session: SessionDoc, name: str) -> Snapshot:
        await session.fresh()
        revision = session.applied_revision
        state = session.state_update()
        state_vector = session.doc.get_state()
        presence = list(session.presence.values())
        fixed = len(state_vector) + sum(p.ByteSize() + 6 for p in presence)
        sizes.require_fits(name, fixed + len(state), "this Read's snapshot")  # before JSON
        found = await self._etcd.range(read(session.meta_key))
        if not found.kvs or found.kvs[0].create_revision != session.created_revision:
            raise session.not_found()
        record = records_pb2.SessionRecord.FromString(found.kvs[0].value)
        kinds = session.root_kinds(state, dict(record.roots))
        view = session_ops.json_view(state, kinds)
        info = info_of(name, found.kvs[0], record)
        fixed += len(view.encode()) + info.ByteSize() + 64  # 64: tags, header
        # Both if they fit; else the JSON alone (Sync gives the state as an update).
        omitted = fixed + len(state) > sizes.MAX_RESPONSE_BYTES
        sizes.require_fits(name, fixed, "this Read's JSON view")
        snapshot = b"" if omitted else state
        return Snapshot(revision, info, snapshot, state_vector, view, presence, omitted)

    async def subscribe(
        self, name: str, state_vector: bytes, presence: bool
    ) -> AsyncIterator[Event]:
        require(
            check_name("name", name) + session_ops.check_state_vector("state_vector", state_vector)
        )
        async with self._loaded.use(name) as session:
            await session.fresh()
            subscriber = session.subscribe(state_vector, presence)
            try:
                async for event in subscriber.events():
                    yield event
            finally:
                session.subscribers.discard(subscriber)

    # --- writes -------------------------------------------------------------------

    async def push(
        self, name: str, update: bytes, *, request_id: str, fence: common_pb2.Fence | None
    ) -> int:
        violations = check_name("name", name) + check_request_id("request_id", request_id)
        if len(update) > MAX_UPDATE_BYTES:
            violations.append(
                FieldViolation("update", f"is {len(update)} bytes; the limit is {MAX_UPDATE_BYTES}")
            )
        else:
            violations += session_ops.check_update("update", update)
        require(violations)
        fences = [fence] if fence is not None else []
        digest = fingerprint(b"session-push", name.encode(), update, *fence_bytes(fences))
        async with self._loaded.use(name) as session:
            if not sizes.fits(session, update, self._max_bytes) and (
                not request_id
                or await self._s.writes.prior(request_id, digest, answering=False) is None
            ):  # a retry of an accepted push is answered as the first time
                raise sizes.too_large(session, update, self._max_bytes)
            with sizes.reserved(session, update):
                entry = uuid.uuid4().hex
                revision, replayed = await self._write(
                    session,
                    [put(session.keys.log(entry), update)],
                    traced_entry=entry,
                    request_id=request_id,
                    fence=fence,
                    digest=digest,
                    answer=lambda revision: sessions_pb2.SessionsPushResponse(
                        header=common_pb2.ResponseHeader(revision=revision)
                    ),
                    stored=False,  # the revision alone: a retry rebuilds it from the record
                )
                if replayed is None:
                    await session.caught_up(revision, CATCH_UP_SECONDS)
                return revision

    async def apply(
        self,
        name: str,
        operations: Sequence[sessions_pb2.Operation],
        *,
        request_id: str,
        fence: common_pb2.Fence | None,
    ) -> tuple[int, bytes]:
        violations = check_name("name", name) + check_request_id("request_id", request_id)
        if not operations:
            violations.append(FieldViolation("operations", "give at least one operation"))
        if len(operations) > MAX_OPERATIONS:
            violations.append(FieldViolation("operations", f"at most {MAX_OPERATIONS}"))
        require(violations)
        require_counts(
            *(
                (f"operations[{i}].path", len(op.path), MAX_PATH_STEPS)
                for i, op in enumerate(operations)
            ),
            *(
                (
                    f"operations[{i}].array_insert.values_json",
                    len(op.array_insert.values_json),
                    MAX_ARRAY_VALUES,
                )
                for i, op in enumerate(operations)
            ),
        )
        digest = fingerprint(
            b"session-apply",
            name.encode(),
            *(op.SerializeToString(deterministic=True) for op in operations),
            *fence_bytes([fence] if fence is not None else []),
        )
        # One at a time per session here: each runs as this replica's Yjs client and must
        # see the previous one's items, or two would reuse the same clocks.
        async with self._loaded.use(name) as session, session.ops_lock:
            return await self._apply_locked(session, operations, request_id, fence, digest)

    async def _apply_locked(
        self,
        session: SessionDoc,
        operations: Sequence[sessions_pb2.Operation],
        request_id: str,
        fence: common_pb2.Fence | None,
        digest: bytes,
    ) -> tuple[int, bytes]:
        if breaks.APPLY_TWICE:  # a test-only bug (tests/faults): retries apply again
            request_id = ""
        prior = await self._s.writes.prior(request_id, digest)
        if prior is not None:  # checked first: the operations would apply differently now
            replay = _replay(prior, sessions_pb2.SessionsApplyResponse)
            return replay.header.revision, replay.update
        await session.fresh()
        found = await self._etcd.range(read(session.meta_key))
        if not found.kvs or found.kvs[0].create_revision != session.created_revision:
            raise session.not_found()
        declared = dict(records_pb2.SessionRecord.FromString(found.kvs[0].value).roots)
        state = session.doc.get_update()
        kinds = session.root_kinds(state, declared)
        update, _ = session_ops.apply_operations(state, session.ops_client_id, operations, kinds)
        if not update:
            return session.applied_revision, b""
        if len(update) > MAX_UPDATE_BYTES:
            raise invalid(
                "operations",
                f"make a {len(update)}-byte update; the limit is {MAX_UPDATE_BYTES}",
            )
        if not sizes.fits(session, update, self._max_bytes):
            raise sizes.too_large(session, update, self._max_bytes)
        with sizes.reserved(session, update):
            entry = uuid.uuid4().hex
            revision, replayed = await self._write(
                session,
                [put(session.keys.log(entry), update)],
                traced_entry=entry,
                request_id=request_id,
                fence=fence,
                digest=digest,
                answer=lambda revision: sessions_pb2.SessionsApplyResponse(
                    header=common_pb2.ResponseHeader(revision=revision), update=update
                ),
            )
            if replayed is not None:
                replay = sessions_pb2.SessionsApplyResponse.FromString(replayed)
                return replay.header.revision, replay.update
            await session.caught_up(revision, CATCH_UP_SECONDS)
            return revision, update

    async def _write(
        self,
        session: SessionDoc,
        effects: list[Op],
        *,
        request_id: str,
        fence: common_pb2.Fence | None,
        digest: bytes,
        answer: Callable[[int], _Answer],
        stored: bool = True,
        traced_entry: str = "",
    ) -> tuple[int, bytes | None]:
        """Apply effects if the session still exists and the fence holds; at most once
        per request_id. Returns (revision, None) on a first attempt, or the first
        attempt's (revision, answer) on a retry. Raises NOT_FOUND or FENCED otherwise.
        stored: False when the answer is its revision alone, which _replay rebuilds from
        the request_id record (so no second etcd write stores it). traced_entry: the log
        entry effects write, whose subscribers get the caller's trace context, if it sent
        one (written first, to keys.trace(traced_entry), on the retention lease)."""
        guard = await self._fencing.guard([fence] if fence is not None else [], field="fence")
        alive = session.alive_key
        traced = calls.current.get().trace_context if traced_entry else None

        def build(lease: int) -> Txn:
            record = []
            if traced is not None:
                context = traced.record().SerializeToString()
                record = [put(session.keys.trace(traced_entry), context, lease=lease)]
            return txn(
                when=[exists(alive), *guard.compares],
                then=[*record, *effects],
                otherwise=[get(alive), *guard.reads],
            )

        async def act(committed: Committed) -> tuple[int, bytes | None]:
            response = committed.response
            if not response.succeeded:
                broken = guard.broken(response.responses[1:])
                if first_kv(response.responses[0]) is not None and broken is not None:
                    raise await self._fencing.fenced(broken)
                raise session.not_found()
            return committed.revision, None

        async def replay(prior: Prior) -> tuple[int, bytes | None]:
            first = _replay(prior, type(answer(0)))
            return first.header.revision, first.SerializeToString()

        return await self._s.writes.apply(
            build,
            request_id=request_id,
            digest=digest,
            act=act,
            replay=replay,
            answer=lambda done: answer(done[0]) if stored else None,
            stable=[alive],  # written only at create and delete: writes may share a batch
            retained=traced is not None,
        )

    # --- presence -----------------------------------------------------------------

    async def set_presence(
        self, name: str, lease_id: int, client_id: int, state_json: str
    ) -> tuple[int, sessions_pb2.Presence]:
        violations = check_name("name", name)
        if lease_id <= 0:
            violations.append(FieldViolation("lease_id", "must be a lease id (> 0)"))
        if not 0 <= client_id < 2**32:
            violations.append(FieldViolation("client_id", "must fit in 32 bits"))
        violations += _check_presence_state("state_json", state_json)
        require(violations)
        lease = await self._leases.owned(lease_id)
        client_id = client_id or _client_id_for(lease_id)
        return await self.put_presence(
            name, lease_id, client_id, state_json, agent_id=lease.record.agent_id
        )

    async def put_presence(
        self,
        name: str,
        lease_id: int,
        client_id: int,
        state_json: str,
        *,
        agent_id: str,
        take_over: bool = False,
    ) -> tuple[int, sessions_pb2.Presence]:
        """Write (or with an empty state, remove) one client's presence on lease_id. A
        client id held on another lease is refused, unless take_over and the presence
        there is agent_id's own (a y-websocket app reconnecting after its replica died,
        whose old lease lingers until it expires): then it moves to lease_id."""
        async with self._loaded.use(name) as session:
            key = session.keys.presence(client_id)
            presence = sessions_pb2.Presence(
                client_id=client_id,
                state_json=state_json,
                agent_id=agent_id,
                lease_id=lease_id,
                updated_at=now(),
            )
            for _ in range(PRESENCE_ATTEMPTS):
                found = await self._etcd.range(read(key))
                current = found.kvs[0] if found.kvs else None
                if current is not None and current.lease != lease_id:
                    if not (take_over and _held_by(current, agent_id)):
                        raise ConditionFailed(
                            f"presence client_id {client_id} in session {name!r} belongs to "
                            "another lease; pick another client_id",
                            metadata={"session": name, "client_id": str(client_id)},
                        )
                    _log.info(
                        "presence moved to a new lease of its agent",
                        session=name,
                        client_id=client_id,
                        old_lease=current.lease,
                        lease=lease_id,
                    )
                if state_json:
                    op = put(key, presence.SerializeToString(), lease=lease_id)
                elif current is None:
                    return int(found.header.revision), presence
                else:
                    op = delete(key)
                seen = current.mod_revision if current is not None else 0
                committed = await self._write_unchanged(session, key, seen, op)
                if committed.response.succeeded:
                    presence.clock = committed.revision
                    return committed.revision, presence
                if first_kv(committed.response.responses[0]) is None:
                    raise session.not_found()
                # Someone wrote this client id since we read it: decide again.
            raise ConditionFailed(
                f"presence client_id {client_id} in session {name!r} kept changing while "
                "this write was made; try again",
                metadata={"session": name, "client_id": str(client_id)},
            )

    async def _write_unchanged(
        self, session: SessionDoc, key: bytes, seen: int, op: Op
    ) -> Committed:
        """op, if the session still exists and key was last modified at seen (0: absent)."""
        request = txn(
            when=[exists(session.alive_key), mod_is(key, seen)],
            then=[op],
            otherwise=[get(session.alive_key)],
        )
        return await self._s.writes.commit(lambda _: request)

    def presence_of(self, name: str) -> list[sessions_pb2.Presence]:
        return self._loaded.presence_of(calls.current.get().namespace, name)


def _check_presence_state(field: str, state_json: str) -> list[FieldViolation]:
    if not state_json:
        return []
    if len(state_json.encode()) > MAX_PRESENCE_BYTES:
        return [FieldViolation(field, f"exceeds {MAX_PRESENCE_BYTES} bytes")]
    try:
        value = strict_json.loads(state_json)
    except ValueError as exc:
        return [FieldViolation(field, f"is not JSON: {exc}")]
    if not isinstance(value, dict):
        return [FieldViolation(field, "must be a JSON object")]
    return []


def _held_by(current: KeyValue, agent_id: str) -> bool:
    """Whether the stored presence is agent_id's. An anonymous caller owns nothing: any
    anonymous connection could claim to be it."""
    try:
        stored = sessions_pb2.Presence.FromString(current.value)
    except DecodeError:
        return False
    return bool(agent_id) and stored.agent_id == agent_id


def _client_id_for(lease_id: int) -> int:
    return zlib.crc32(lease_id.to_bytes(8, "big")) or 1


M = TypeVar("M", bound=Message)
# What a session write answers; a retry gets the same back.
_Answer = sessions_pb2.SessionsPushResponse | sessions_pb2.SessionsApplyResponse


def _replay(prior: Prior, answer_type: type[M]) -> M:
    """The first attempt's answer, or its failure raised again."""
    record = prior.record
    if not record.applied:
        if record.answer:
            raise StoredFailure(status_pb2.Status.FromString(record.answer))
        raise ConditionFailed(
            "this request_id was refused the first time (the session was gone or the fence "
            "no longer held)"
        )
    if record.answer:
        return answer_type.FromString(record.answer)
    return answer_type(header=common_pb2.ResponseHeader(revision=prior.revision))
