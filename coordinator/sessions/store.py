"""Collaborative sessions: Yjs documents merged as CRDTs, durable in etcd, any replica.

A session is a record {root}/ns/{namespace}/sessions/{name} plus its data (see
session_doc.py). Every accepted update is one etcd key written by a Txn that also checks
the session still exists, the caller's fence (if any) and its request_id (if any), so an
acknowledged update is durable and applied at most once. Replicas load a session on
first use, follow its keys with an etcd watch, serve every read from the document, and
unload it when idle, so memory follows active sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aetcd.rpc import rpc_pb2 as rpc
from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from accord.coordinator import logs
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.store import LockStore
from accord.coordinator.sessions import ops as session_ops
from accord.coordinator.sessions.doc import Event, SessionDoc
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    AccordError,
    ConditionFailed,
    FieldViolation,
    NotFound,
    StoredFailure,
    invalid,
    require,
)
from accord.coordinator.substrate.etcd import Etcd, mod_is, prefix_end, put_op
from accord.coordinator.substrate.group_commit import GroupCommitter
from accord.coordinator.substrate.idempotency import Idempotency, Prior, fingerprint, send_retained
from accord.coordinator.substrate.limits import Limits, check_key, check_request_id
from accord.coordinator.substrate.retention import RetentionLeases
from accord.v1 import common_pb2, records_pb2, sessions_pb2

_log = logs.get("accord.sessions")
T = TypeVar("T")

MAX_NAME_BYTES = 256
MAX_UPDATE_BYTES = 512 * 1024
MAX_OPERATIONS = 256
MAX_PRESENCE_BYTES = 8 * 1024
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
CATCH_UP_SECONDS = 5.0
_NAME_LIMITS = Limits(max_key_bytes=MAX_NAME_BYTES)
_KINDS = {
    sessions_pb2.ROOT_KIND_MAP,
    sessions_pb2.ROOT_KIND_TEXT,
    sessions_pb2.ROOT_KIND_ARRAY,
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    info: sessions_pb2.SessionInfo
    update: bytes
    state_vector: bytes
    json: str
    presence: list[sessions_pb2.Presence]


def check_name(field: str, name: str) -> list[FieldViolation]:
    return check_key(field, name, _NAME_LIMITS)


class SessionStore:
    def __init__(
        self,
        etcd: Etcd,
        committer: GroupCommitter,
        retention: RetentionLeases,
        idempotency: Idempotency,
        leases: LeaseStore,
        locks: LockStore,
        *,
        root: str,
        idle_seconds: float = 30.0,
    ) -> None:
        self._etcd = etcd
        self._committer = committer
        self._retention = retention
        self._idempotency = idempotency
        self._leases = leases
        self._locks = locks
        self._root = root
        self.idle_seconds = idle_seconds
        self._loaded: dict[tuple[str, str], SessionDoc] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[SessionDoc]] = {}
        self._reaper: asyncio.Task[None] | None = None

    # --- layout -------------------------------------------------------------------

    def _meta_key(self, namespace: str, name: str) -> bytes:
        return f"{self._root}/ns/{namespace}/sessions/{name}".encode()

    def _meta_prefix(self, namespace: str) -> bytes:
        return f"{self._root}/ns/{namespace}/sessions/".encode()

    def loaded_count(self) -> int:
        return len(self._loaded)

    # --- open, list, delete -------------------------------------------------------

    async def open(
        self, name: str, *, must_exist: bool, roots: Mapping[str, int]
    ) -> tuple[int, sessions_pb2.SessionInfo, bool]:
        violations = check_name("name", name)
        for root, kind in roots.items():
            if not root:
                violations.append(FieldViolation("roots", "a root name must not be empty"))
            if kind not in _KINDS:
                violations.append(FieldViolation(f"roots[{root!r}]", "must be map, text or array"))
        require(violations)
        call = calls.current.get()
        key = self._meta_key(call.namespace, name)
        for _ in range(8):
            found = await self._etcd.range(rpc.RangeRequest(key=key))
            if not found.kvs:
                if must_exist:
                    raise _not_found(call.namespace, name)
                created = await self._create(call.namespace, name, dict(roots))
                if created is not None:
                    return created
                continue  # created meanwhile by someone else: open that one
            raw = found.kvs[0]
            record = records_pb2.SessionRecord.FromString(raw.value)
            missing = {}
            for root, kind in roots.items():
                have = record.roots.get(root, 0)
                if have and have != kind:
                    raise ConditionFailed(
                        f"root {root!r} of session {name!r} is declared as "
                        f"{session_ops.KIND_NAMES[have]}, not {session_ops.KIND_NAMES[kind]}",
                        metadata={"session": name, "root": root},
                    )
                if not have:
                    missing[root] = kind
            if not missing:
                return found.header.revision, _info(name, raw, record), False
            record.roots.update(missing)
            done = await self._etcd.txn(
                rpc.TxnRequest(
                    compare=[mod_is(key, raw.mod_revision)],
                    success=[put_op(key, record.SerializeToString())],
                )
            )
            if done.succeeded:
                raw.mod_revision = done.header.revision
                return done.header.revision, _info(name, raw, record), False
        raise AccordError(f"session {name!r} changed too often while being opened; try again")

    async def _create(
        self, namespace: str, name: str, roots: dict[str, int]
    ) -> tuple[int, sessions_pb2.SessionInfo, bool] | None:
        call = calls.current.get()
        record = records_pb2.SessionRecord(
            created_by=common_pb2.Provenance(agent_id=call.agent_id, written_at=_now()),
            roots=roots,
            incarnation=random.getrandbits(64),
        )
        key = self._meta_key(namespace, name)
        doc = SessionDoc(self._etcd, self._root, namespace, name, 0, record.incarnation)
        done = await self._etcd.txn(
            rpc.TxnRequest(
                compare=[
                    rpc.Compare(
                        key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
                    )
                ],
                success=[put_op(key, record.SerializeToString()), put_op(doc.alive_key, b"")],
            )
        )
        if not done.succeeded:
            return None
        revision = int(done.header.revision)
        info = sessions_pb2.SessionInfo(
            name=name,
            created_revision=revision,
            created_by=record.created_by,
            roots={k: sessions_pb2.RootKind.ValueType(v) for k, v in roots.items()},
        )
        return revision, info, True

    async def list_sessions(
        self, prefix: str, limit: int, page_token: str
    ) -> tuple[int, list[sessions_pb2.SessionInfo], str]:
        violations = check_key("prefix", prefix, _NAME_LIMITS, allow_empty=True)
        if limit < 0 or limit > MAX_LIST_LIMIT:
            violations.append(FieldViolation("limit", f"must be between 0 and {MAX_LIST_LIMIT}"))
        if page_token and not page_token.startswith(prefix):
            violations.append(FieldViolation("page_token", "does not belong to this prefix"))
        require(violations)
        ns = calls.current.get().namespace
        base = self._meta_prefix(ns)
        start = base + (page_token.encode() + b"\x00" if page_token else prefix.encode())
        found = await self._etcd.range(
            rpc.RangeRequest(
                key=start,
                range_end=prefix_end(base + prefix.encode()),
                limit=limit or DEFAULT_LIST_LIMIT,
            )
        )
        infos = [
            _info(
                kv.key[len(base) :].decode(),
                kv,
                records_pb2.SessionRecord.FromString(kv.value),
            )
            for kv in found.kvs
        ]
        token = infos[-1].name if found.more and infos else ""
        return int(found.header.revision), infos, token

    async def delete(
        self, name: str, *, expected_created_revision: int, request_id: str
    ) -> tuple[int, bool]:
        violations = check_name("name", name) + check_request_id("request_id", request_id)
        if expected_created_revision < 0:
            violations.append(FieldViolation("expected_created_revision", "must not be negative"))
        require(violations)
        call = calls.current.get()
        key = self._meta_key(call.namespace, name)
        digest = fingerprint(
            b"session-delete", name.encode(), str(expected_created_revision).encode()
        )
        idem = (
            self._idempotency.key(call.namespace, call.agent_id, request_id) if request_id else b""
        )
        found = await self._etcd.range(rpc.RangeRequest(key=key))
        if not found.kvs:
            if idem:
                prior = await self._prior(idem, digest, request_id)
                if prior is not None:
                    return prior.revision, prior.record.applied
            if expected_created_revision:
                raise ConditionFailed(
                    f"session {name!r} does not exist (expected created_revision "
                    f"{expected_created_revision})",
                    metadata={"session": name},
                )
            return int(found.header.revision), False
        raw = found.kvs[0]
        if expected_created_revision and raw.create_revision != expected_created_revision:
            raise ConditionFailed(
                f"session {name!r} is the incarnation created at revision "
                f"{raw.create_revision}, not {expected_created_revision}",
                metadata={"session": name, "created_revision": str(raw.create_revision)},
            )
        record = records_pb2.SessionRecord.FromString(raw.value)
        data = SessionDoc(
            self._etcd, self._root, call.namespace, name, raw.create_revision, record.incarnation
        ).prefix
        inner = rpc.TxnRequest(
            compare=[mod_is(key, raw.mod_revision)],
            success=[
                rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)),
                rpc.RequestOp(
                    request_delete_range=rpc.DeleteRangeRequest(
                        key=data, range_end=prefix_end(data)
                    )
                ),
            ],
        )
        if idem:
            done = await send_retained(self._retention, inner, idem, digest, self._etcd.txn)
        else:
            done = await self._etcd.txn(inner)
        response = done
        if idem:
            response, prior = Idempotency.unwrap(done, digest, request_id)
            if prior is not None:
                return prior.revision, prior.record.applied
        if not response.succeeded:
            raise ConditionFailed(
                f"session {name!r} changed while being deleted; read it and try again",
                metadata={"session": name},
            )
        return int(done.header.revision), True

    async def _prior(self, idem: bytes, digest: bytes, request_id: str) -> Prior | None:
        found = await self._etcd.range(rpc.RangeRequest(key=idem))
        return Idempotency.prior(found.kvs[0], digest, request_id) if found.kvs else None

    # --- loading ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _use(self, name: str) -> AsyncIterator[SessionDoc]:
        """The loaded session, kept loaded while in use."""
        ns = calls.current.get().namespace
        key = (ns, name)
        session = self._loaded.get(key)
        if session is None or session.gone:
            session = await self._load(key)
        session.busy += 1
        try:
            yield session
        finally:
            session.busy -= 1
            session.last_used = time.monotonic()

    async def _load(self, key: tuple[str, str]) -> SessionDoc:
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[SessionDoc] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            ns, name = key
            found = await self._etcd.range(rpc.RangeRequest(key=self._meta_key(ns, name)))
            if not found.kvs:
                raise _not_found(ns, name)
            record = records_pb2.SessionRecord.FromString(found.kvs[0].value)
            session = SessionDoc(
                self._etcd, self._root, ns, name, found.kvs[0].create_revision, record.incarnation
            )
            session.on_gone = self._forget
            await session.load()
            self._loaded[key] = session
            future.set_result(session)
            if self._reaper is None or self._reaper.done():
                self._reaper = asyncio.create_task(self._reap())
            return session
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a load nobody else awaited is not an error
            raise
        finally:
            self._loading.pop(key, None)

    def _forget(self, session: SessionDoc) -> None:
        key = (session.namespace, session.name)
        if self._loaded.get(key) is session:
            del self._loaded[key]

    async def _reap(self) -> None:
        """Unload sessions nobody used for idle_seconds: memory follows active sessions."""
        while self._loaded:
            await asyncio.sleep(max(0.05, self.idle_seconds / 4))
            now = time.monotonic()
            for key, session in list(self._loaded.items()):
                if not _idle(session, now, self.idle_seconds):
                    continue
                if session.worth_compacting():  # leave it in etcd at its smallest
                    await session.compact_now()
                    if not _idle(session, time.monotonic(), self.idle_seconds):
                        continue
                if self._loaded.get(key) is session:
                    del self._loaded[key]
                await session.close()

    def end_streams(self) -> None:
        for session in self._loaded.values():
            session.end_streams()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for session in list(self._loaded.values()):
            await session.close()
        self._loaded.clear()

    # --- reads --------------------------------------------------------------------

    async def sync(self, name: str, state_vector: bytes) -> tuple[int, bytes, bytes]:
        require(
            check_name("name", name) + session_ops.check_state_vector("state_vector", state_vector)
        )
        async with self._use(name) as session:
            await session.fresh()
            update = session.state_update(state_vector)
            return session.applied_revision, update, session.doc.get_state()

    async def read(self, name: str) -> Snapshot:
        require(check_name("name", name))
        async with self._use(name) as session:
            await session.fresh()
            revision = session.applied_revision
            state = session.state_update()
            state_vector = session.doc.get_state()
            presence = list(session.presence.values())
            found = await self._etcd.range(rpc.RangeRequest(key=session.meta_key))
            if not found.kvs or found.kvs[0].create_revision != session.created_revision:
                raise session.not_found()
            record = records_pb2.SessionRecord.FromString(found.kvs[0].value)
            kinds = session.root_kinds(state, dict(record.roots))
            view = session_ops.json_view(state, kinds)
            info = _info(name, found.kvs[0], record)
            return Snapshot(revision, info, state, state_vector, view, presence)

    async def subscribe(
        self, name: str, state_vector: bytes, presence: bool
    ) -> AsyncIterator[Event]:
        require(
            check_name("name", name) + session_ops.check_state_vector("state_vector", state_vector)
        )
        async with self._use(name) as session:
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
        digest = fingerprint(b"session-push", name.encode(), update, *_fence_bytes(fence))
        async with self._use(name) as session:
            revision, answer = await self._write_update(
                session, update, request_id=request_id, fence=fence, digest=digest
            )
            if answer is not None:
                return int(answer.header.revision)
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
        digest = fingerprint(
            b"session-apply",
            name.encode(),
            *(op.SerializeToString(deterministic=True) for op in operations),
            *_fence_bytes(fence),
        )
        # One at a time per session here: each runs as this replica's Yjs client and must
        # see the previous one's items, or two would reuse the same clocks.
        async with self._use(name) as session, session.ops_lock:
            return await self._apply_locked(session, operations, request_id, fence, digest)

    async def _apply_locked(
        self,
        session: SessionDoc,
        operations: Sequence[sessions_pb2.Operation],
        request_id: str,
        fence: common_pb2.Fence | None,
        digest: bytes,
    ) -> tuple[int, bytes]:
        if request_id:
            call = calls.current.get()
            idem = self._idempotency.key(call.namespace, call.agent_id, request_id)
            prior = await self._prior(idem, digest, request_id)
            if prior is not None:
                replay = _replay(prior, sessions_pb2.SessionsApplyResponse)
                return replay.header.revision, replay.update
        await session.fresh()
        found = await self._etcd.range(rpc.RangeRequest(key=session.meta_key))
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
        revision, answer = await self._write_update(
            session,
            update,
            request_id=request_id,
            fence=fence,
            digest=digest,
            apply_answer=True,
        )
        if answer is not None:
            return answer.header.revision, answer.update
        await session.caught_up(revision, CATCH_UP_SECONDS)
        return revision, update

    async def _write_update(
        self,
        session: SessionDoc,
        update: bytes,
        *,
        request_id: str,
        fence: common_pb2.Fence | None,
        digest: bytes,
        apply_answer: bool = False,
    ) -> tuple[int, Any]:
        """Store one update. Returns (revision, None), or (_, the first answer) when this
        request_id was seen before."""
        log_key = session.log_key(uuid.uuid4().hex)
        committed, prior = await self._commit(
            session, [put_op(log_key, update)], {log_key}, len(update), request_id, fence, digest
        )
        answer_type = (
            sessions_pb2.SessionsApplyResponse
            if apply_answer
            else sessions_pb2.SessionsPushResponse
        )
        if prior is not None:
            return prior.revision, _replay(prior, answer_type)
        if request_id:
            call = calls.current.get()
            header = common_pb2.ResponseHeader(revision=committed)
            answer: Any = (
                sessions_pb2.SessionsApplyResponse(header=header, update=update)
                if apply_answer
                else sessions_pb2.SessionsPushResponse(header=header)
            )
            self._idempotency.remember(
                self._idempotency.key(call.namespace, call.agent_id, request_id),
                committed,
                digest,
                applied=True,
                answer=answer.SerializeToString(),
            )
        return committed, None

    async def _commit(
        self,
        session: SessionDoc,
        ops: list[Any],
        keys: set[bytes],
        size: int,
        request_id: str,
        fence: common_pb2.Fence | None,
        digest: bytes,
    ) -> tuple[int, Prior | None]:
        """Run ops if the session still exists and the fence holds; at most once per
        request_id. Raises NOT_FOUND or FENCED otherwise."""
        call = calls.current.get()
        fences = [fence] if fence is not None else []
        fence_checks = await self._locks.fence_compares(fences, field="fence") if fences else []
        compares = [
            rpc.Compare(
                key=session.alive_key,
                target=rpc.Compare.VERSION,
                result=rpc.Compare.GREATER,
                version=0,
            )
        ]
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=session.alive_key))]
        for check in fence_checks:
            compares.extend(check.compares)
            failure.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=check.key)))
            keys.add(check.key)
        inner = rpc.TxnRequest(compare=compares, success=ops, failure=failure)
        weight = 1 + max(len(ops), len(failure), len(compares))
        if request_id:
            idem = self._idempotency.key(call.namespace, call.agent_id, request_id)
            keys.add(idem)
            committed = await send_retained(
                self._retention,
                inner,
                idem,
                digest,
                lambda txn: self._committer.commit(
                    txn, keys, size + len(idem) + 128, retry=True, weight=weight + 1
                ),
            )
            response, prior = Idempotency.unwrap(committed.response, digest, request_id)
            if prior is not None:
                return prior.revision, prior
        else:
            committed = await self._committer.commit(
                inner, keys, size + 128, retry=False, weight=weight
            )
            response = committed.response
        if not response.succeeded:
            error: AccordError = session.not_found()
            if response.responses[0].response_range.kvs and fence is not None:
                error = await self._locks.fenced(fence)
            if request_id:
                idem = self._idempotency.key(call.namespace, call.agent_id, request_id)
                self._idempotency.remember(
                    idem,
                    committed.revision,
                    digest,
                    applied=False,
                    answer=error.to_status().SerializeToString(),
                )
            raise error
        return committed.revision, None

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
        self, name: str, lease_id: int, client_id: int, state_json: str, *, agent_id: str
    ) -> tuple[int, sessions_pb2.Presence]:
        """Write (or with an empty state, remove) one client's presence on lease_id. A
        client id held on another lease is refused."""
        async with self._use(name) as session:
            key = session.presence_key(client_id)
            found = await self._etcd.range(rpc.RangeRequest(key=key))
            current = found.kvs[0] if found.kvs else None
            if current is not None and current.lease != lease_id:
                raise ConditionFailed(
                    f"presence client_id {client_id} in session {name!r} belongs to another "
                    "lease; pick another client_id",
                    metadata={"session": name, "client_id": str(client_id)},
                )
            presence = sessions_pb2.Presence(
                client_id=client_id,
                state_json=state_json,
                agent_id=agent_id,
                lease_id=lease_id,
                updated_at=_now(),
            )
            if state_json:
                op = put_op(key, presence.SerializeToString(), lease=lease_id)
            elif current is None:
                return int(found.header.revision), presence
            else:
                op = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
            revision, _ = await self._commit(
                session, [op], {key}, len(state_json) + 128, "", None, b""
            )
            presence.clock = revision
            return revision, presence

    def presence_of(self, name: str) -> list[sessions_pb2.Presence]:
        ns = calls.current.get().namespace
        session = self._loaded.get((ns, name))
        return list(session.presence.values()) if session else []


def _idle(session: SessionDoc, now: float, idle_seconds: float) -> bool:
    return (
        session.busy == 0
        and not session.subscribers
        and now - session.last_used >= idle_seconds
        and not session.gone
    )


def _check_presence_state(field: str, state_json: str) -> list[FieldViolation]:
    if not state_json:
        return []
    if len(state_json.encode()) > MAX_PRESENCE_BYTES:
        return [FieldViolation(field, f"exceeds {MAX_PRESENCE_BYTES} bytes")]
    try:
        value = json.loads(state_json)
    except (ValueError, RecursionError) as exc:
        return [FieldViolation(field, f"is not JSON: {exc}")]
    if not isinstance(value, dict):
        return [FieldViolation(field, "must be a JSON object")]
    return []


def _client_id_for(lease_id: int) -> int:
    return zlib.crc32(lease_id.to_bytes(8, "big")) or 1


def _replay(prior: Prior, answer_type: Any) -> Any:
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


def _not_found(namespace: str, name: str) -> NotFound:
    return NotFound(
        f"session {name!r} does not exist in namespace {namespace!r}",
        metadata={"session": name},
    )


def _info(name: str, raw: Any, record: records_pb2.SessionRecord) -> sessions_pb2.SessionInfo:
    return sessions_pb2.SessionInfo(
        name=name,
        created_revision=raw.create_revision,
        created_by=record.created_by,
        roots={k: sessions_pb2.RootKind.ValueType(v) for k, v in record.roots.items()},
        snapshot_revision=record.snapshot_revision,
    )


def _fence_bytes(fence: common_pb2.Fence | None) -> list[bytes]:
    return [fence.SerializeToString(deterministic=True)] if fence is not None else []


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp
