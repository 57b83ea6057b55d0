"""The sessions of a namespace: their records, created, opened, listed and deleted.

A session's record (keyspace.session) names its declared roots and its incarnation; its
data (keyspace.SessionData) lives under a prefix of that incarnation, so deleting a
session and creating one of the same name never mixes their data.

Error handling: bad names or root kinds are INVALID_ARGUMENT; opening a missing session
with must_exist is NOT_FOUND; declaring a root with another kind than it has is
CONDITION_FAILED; deleting another incarnation than expected is CONDITION_FAILED. A
retried delete (same request_id) gets its first answer. With auth required, deleting a
session another principal created is PERMISSION_DENIED unless the caller is an ADMIN of
the namespace.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from accord.coordinator.sessions import ops as session_ops
from accord.coordinator.sessions.loaded import not_found
from accord.coordinator.substrate import Substrate, audit, calls
from accord.coordinator.substrate.errors import (
    AccordError,
    ConditionFailed,
    FieldViolation,
    PermissionDenied,
    StoredFailure,
    require,
)
from accord.coordinator.substrate.group_commit import Committed
from accord.coordinator.substrate.idempotency import Prior, fingerprint
from accord.coordinator.substrate.limits import (
    MAX_SESSION_ROOTS,
    Limits,
    check_key,
    check_request_id,
    require_counts,
)
from accord.coordinator.substrate.pages import PageBudget
from accord.coordinator.substrate.txn import (
    KeyValue,
    Txn,
    absent,
    delete,
    mod_is,
    put,
    read,
    txn,
)
from accord.v1 import common_pb2, records_pb2, sessions_pb2

MAX_NAME_BYTES = 256
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
_NAME_LIMITS = Limits(max_key_bytes=MAX_NAME_BYTES)
_KINDS = {
    sessions_pb2.ROOT_KIND_MAP,
    sessions_pb2.ROOT_KIND_TEXT,
    sessions_pb2.ROOT_KIND_ARRAY,
}


def check_name(field: str, name: str) -> list[FieldViolation]:
    return check_key(field, name, _NAME_LIMITS)


class SessionCatalog:
    def __init__(self, substrate: Substrate) -> None:
        self._s = substrate

    async def open(
        self, name: str, *, must_exist: bool, roots: Mapping[str, int]
    ) -> tuple[int, sessions_pb2.SessionInfo, bool]:
        require_counts(("roots", len(roots), MAX_SESSION_ROOTS))
        violations = check_name("name", name)
        for root, kind in roots.items():
            if not root:
                violations.append(FieldViolation("roots", "a root name must not be empty"))
            if kind not in _KINDS:
                violations.append(FieldViolation(f"roots[{root!r}]", "must be map, text or array"))
        require(violations)
        call = calls.current.get()
        key = self._s.keys.session(call.namespace, name)
        for _ in range(8):
            found = await self._s.etcd.range(read(key))
            if not found.kvs:
                if must_exist:
                    raise not_found(call.namespace, name)
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
                return found.header.revision, info_of(name, raw, record), False
            require_counts(("roots", len(record.roots) + len(missing), MAX_SESSION_ROOTS))
            record.roots.update(missing)
            unchanged = mod_is(key, raw.mod_revision)
            done = await self._s.etcd.txn(
                txn(when=[unchanged], then=[put(key, record.SerializeToString())])
            )
            if done.succeeded:
                raw.mod_revision = done.header.revision
                return done.header.revision, info_of(name, raw, record), False
        raise AccordError(f"session {name!r} changed too often while being opened; try again")

    async def _create(
        self, namespace: str, name: str, roots: dict[str, int]
    ) -> tuple[int, sessions_pb2.SessionInfo, bool] | None:
        call = calls.current.get()
        record = records_pb2.SessionRecord(
            created_by=common_pb2.Provenance(
                agent_id=call.agent_id, written_at=now(), principal=call.principal
            ),
            roots=roots,
            incarnation=random.getrandbits(64),
        )
        key = self._s.keys.session(namespace, name)
        alive = self._s.keys.session_data(namespace, name, record.incarnation).alive
        done = await self._s.etcd.txn(
            txn(
                when=[absent(key)],
                then=[put(key, record.SerializeToString()), put(alive, b"")],
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
        elif page_token:  # the last name of the page before
            violations += check_name("page_token", page_token)
        require(violations)
        ns = calls.current.get().namespace
        base = self._s.keys.sessions_prefix(ns)
        request = read(base + prefix.encode(), prefix=True)
        if page_token:
            request.key = base + page_token.encode() + b"\x00"
        request.limit = limit or DEFAULT_LIST_LIMIT
        found = await self._s.etcd.range(request)
        budget = PageBudget()  # a page fits a standard client, whatever limit says
        infos: list[sessions_pb2.SessionInfo] = []
        for kv in found.kvs:
            info = info_of(
                kv.key[len(base) :].decode(), kv, records_pb2.SessionRecord.FromString(kv.value)
            )
            if not budget.take(info):
                break
            infos.append(info)
        more = found.more or len(infos) < len(found.kvs)
        token = infos[-1].name if more and infos else ""
        return int(found.header.revision), infos, token

    async def delete(
        self, name: str, *, expected_created_revision: int, request_id: str
    ) -> tuple[int, bool]:
        violations = check_name("name", name) + check_request_id("request_id", request_id)
        if expected_created_revision < 0:
            violations.append(FieldViolation("expected_created_revision", "must not be negative"))
        require(violations)
        call = calls.current.get()
        key = self._s.keys.session(call.namespace, name)
        digest = fingerprint(
            b"session-delete", name.encode(), str(expected_created_revision).encode()
        )
        found = await self._s.etcd.range(read(key))
        if not found.kvs:
            prior = await self._s.writes.prior(request_id, digest)
            if prior is not None:
                return _deleted(prior)
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
        _check_owner(call, name, record)  # the record read is the one the txn requires
        data = self._s.keys.session_data(call.namespace, name, record.incarnation).prefix
        unchanged = mod_is(key, raw.mod_revision)

        async def act(committed: Committed) -> tuple[int, bool]:
            if not committed.response.succeeded:
                raise ConditionFailed(
                    f"session {name!r} changed while being deleted; read it and try again",
                    metadata={"session": name},
                )
            return committed.revision, True

        async def replay(prior: Prior) -> tuple[int, bool]:
            return _deleted(prior)

        owner = record.created_by.principal
        logged = audit.entry("DeleteSession", name, f"created by {owner}")
        on_behalf = audit.on_behalf(owner)  # an ADMIN deletes another's: logged in the act

        def build(lease: int) -> Txn:
            then = [delete(key), delete(data, prefix=True)]
            if on_behalf:
                then.append(audit.write(self._s.keys, logged, lease))
            return txn(when=[unchanged], then=then)

        return await self._s.writes.apply(
            build,
            request_id=request_id,
            digest=digest,
            act=act,
            replay=replay,
            answer=lambda done: sessions_pb2.SessionsDeleteResponse(
                header=common_pb2.ResponseHeader(revision=done[0]), deleted=done[1]
            ),
            batched=False,
        )


def info_of(
    name: str, raw: KeyValue, record: records_pb2.SessionRecord
) -> sessions_pb2.SessionInfo:
    return sessions_pb2.SessionInfo(
        name=name,
        created_revision=raw.create_revision,
        created_by=record.created_by,
        roots={k: sessions_pb2.RootKind.ValueType(v) for k, v in record.roots.items()},
        snapshot_revision=record.snapshot_revision,
    )


def _deleted(prior: Prior) -> tuple[int, bool]:
    """A retried delete's first answer: (revision, whether it deleted). Without a stored
    answer (its replica died first) the record's own revision is the delete's."""
    record = prior.record
    if record.answer and not record.applied:
        raise StoredFailure(status_pb2.Status.FromString(record.answer))
    if record.answer:
        first = sessions_pb2.SessionsDeleteResponse.FromString(record.answer)
        return first.header.revision, first.deleted
    return prior.revision, record.applied


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def _check_owner(call: calls.Call, name: str, record: records_pb2.SessionRecord) -> None:
    """With auth required only the principal that created a session, or an ADMIN of
    the namespace, deletes it."""
    owner = record.created_by.principal
    if not call.principal or call.namespace_admin or owner == call.principal:
        return
    raise PermissionDenied(
        f"session {name!r} was created by principal {owner or '(created without auth)'!r}; "
        f"only it or an ADMIN of namespace {call.namespace!r} may delete it",
        metadata={"session": name, "owner": owner, "role": "ADMIN", "namespace": call.namespace},
    )
