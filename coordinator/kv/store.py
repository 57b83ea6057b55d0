"""Versioned shared memory: keys with revisions, conditional writes, transactions,
watches and history, per namespace.

Guarantees: every write records its agent and time; a conditional write applies only if
its precondition holds at commit, otherwise CONDITION_FAILED reports the key's current
state; a write with a request_id applies at most once, and a retry on any replica gets
the first outcome (the record is written in the same etcd Txn as the effect). All
writes go through group commit, which changes no single write's semantics.

etcd layout under {root}/ns/{namespace}/:
  kv/{key}                      StoredValue (value + provenance)
  tomb/{key}                    Tombstone: who deleted the key (retention lease)
  idem/...                      IdempotencyRecord (see idempotency.py)
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aetcd.rpc import rpc_pb2 as rpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.store import FenceCheck, LockStore
from accord.coordinator.substrate import calls, preconditions
from accord.coordinator.substrate.errors import (
    Compacted,
    ConditionFailed,
    Fenced,
    FieldViolation,
    InvalidArgument,
    LeaseNotFound,
    StoredFailure,
    invalid,
)
from accord.coordinator.substrate.etcd import Etcd, prefix_end, put_op
from accord.coordinator.substrate.group_commit import GroupCommitter
from accord.coordinator.substrate.idempotency import Idempotency, Prior, fingerprint
from accord.coordinator.substrate.limits import Limits, check_key, check_request_id, check_value
from accord.coordinator.substrate.retention import RetentionLeases
from accord.v1 import common_pb2, kv_pb2, records_pb2

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
# A List page stays under this many bytes of values however large they are.
MAX_PAGE_BYTES = 32 * 1024 * 1024
MAX_FENCES = 8
DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Check:
    key: str
    precondition: kv_pb2.Precondition
    index: int


@dataclass(frozen=True, slots=True)
class Op:
    key: str
    value: bytes | None  # None: delete
    lease: int = 0  # a put attached to this lease: deleted when the lease ends


@dataclass(frozen=True, slots=True)
class Mutation:
    revision: int
    results: list[kv_pb2.TxnOpResult]
    replayed: bool


@dataclass(frozen=True, slots=True)
class Page:
    revision: int
    kvs: list[kv_pb2.KeyValue]
    next_page_token: str
    total: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int
    events: list[kv_pb2.WatchEvent]
    resume_revision: int


@dataclass(frozen=True, slots=True)
class History:
    revision: int
    entries: list[kv_pb2.HistoryEntry]
    next_before_revision: int
    truncated_by_compaction: bool


class KVStore:
    def __init__(
        self,
        etcd: Etcd,
        committer: GroupCommitter,
        retention: RetentionLeases,
        idempotency: Idempotency,
        *,
        root: str,
        limits: Limits,
        leases: LeaseStore | None = None,
        locks: LockStore | None = None,
    ) -> None:
        self._leases = leases
        self._locks = locks
        self._etcd = etcd
        self._committer = committer
        self._retention = retention
        self._idempotency = idempotency
        self._root = root
        self.limits = limits

    # --- layout -------------------------------------------------------------------

    def _data_prefix(self, namespace: str) -> bytes:
        return f"{self._root}/ns/{namespace}/kv/".encode()

    def _data_key(self, namespace: str, key: str) -> bytes:
        return f"{self._root}/ns/{namespace}/kv/{key}".encode()

    def _tomb_key(self, namespace: str, key: str) -> bytes:
        return f"{self._root}/ns/{namespace}/tomb/{key}".encode()

    # --- reads --------------------------------------------------------------------

    async def get(
        self, key: str, consistency: int, revision: int
    ) -> tuple[int, kv_pb2.KeyValue | None]:
        self._require(check_key("key", key, self.limits) + _check_revision("revision", revision))
        call = calls.current.get()
        response = await self._etcd.range(
            rpc.RangeRequest(
                key=self._data_key(call.namespace, key),
                revision=revision,
                serializable=consistency == kv_pb2.CONSISTENCY_SERIALIZABLE,
            )
        )
        kv = self._to_kv(call.namespace, response.kvs[0]) if response.kvs else None
        return response.header.revision, kv

    async def list_keys(
        self,
        prefix: str,
        *,
        limit: int,
        page_token: str,
        keys_only: bool,
        consistency: int,
        revision: int,
    ) -> Page:
        violations = check_key("prefix", prefix, self.limits, allow_empty=True)
        violations += _check_revision("revision", revision)
        if limit < 0 or limit > MAX_LIST_LIMIT:
            violations.append(FieldViolation("limit", f"must be between 0 and {MAX_LIST_LIMIT}"))
        cursor = _ListCursor.decode(page_token) if page_token else None
        if page_token and cursor is None:
            violations.append(FieldViolation("page_token", "is not a token this service issued"))
        self._require(violations)
        call = calls.current.get()
        base = self._data_key(call.namespace, prefix)
        start = (
            base if cursor is None else self._data_key(call.namespace, cursor.after_key) + b"\x00"
        )
        per_entry = self.limits.max_value_bytes + self.limits.max_key_bytes + 256
        page_size = min(limit or DEFAULT_LIST_LIMIT, max(1, MAX_PAGE_BYTES // per_entry))
        response = await self._etcd.range(
            rpc.RangeRequest(
                key=start,
                range_end=prefix_end(base),
                limit=page_size,
                revision=cursor.revision if cursor else revision,
                keys_only=keys_only,
                serializable=consistency == kv_pb2.CONSISTENCY_SERIALIZABLE,
            )
        )
        kvs = [self._to_kv(call.namespace, kv) for kv in response.kvs]
        read_revision = cursor.revision if cursor else response.header.revision
        total = cursor.total if cursor else response.count
        token = ""
        if response.more and kvs:
            token = _ListCursor(read_revision, total, kvs[-1].key).encode()
        return Page(read_revision, kvs, token, total)

    # --- writes -------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes,
        precondition: kv_pb2.Precondition | None,
        *,
        request_id: str,
        return_current: bool,
        fence: common_pb2.Fence | None = None,
        lease_id: int = 0,
    ) -> Mutation:
        violations = check_key("key", key, self.limits) + check_value("value", value, self.limits)
        violations += check_request_id("request_id", request_id)
        violations += preconditions.check("precondition", precondition)
        if lease_id < 0:
            violations.append(FieldViolation("lease_id", "must not be negative"))
        self._require(violations)
        fences = [fence] if fence is not None else []
        digest = fingerprint(
            b"put",
            key.encode(),
            value,
            _bytes(precondition),
            str(lease_id).encode(),
            *_fence_bytes(fences),
        )
        return await self._mutate(
            _single_check(key, precondition),
            [Op(key, value, lease_id)],
            fences,
            request_id=request_id,
            return_current=return_current,
            digest=digest,
        )

    async def delete(
        self,
        key: str,
        precondition: kv_pb2.Precondition | None,
        *,
        request_id: str,
        return_current: bool,
        fence: common_pb2.Fence | None = None,
    ) -> Mutation:
        violations = check_key("key", key, self.limits) + check_request_id("request_id", request_id)
        violations += preconditions.check("precondition", precondition)
        self._require(violations)
        fences = [fence] if fence is not None else []
        digest = fingerprint(b"delete", key.encode(), _bytes(precondition), *_fence_bytes(fences))
        return await self._mutate(
            _single_check(key, precondition),
            [Op(key, None)],
            fences,
            request_id=request_id,
            return_current=return_current,
            digest=digest,
        )

    async def txn(
        self,
        checks: Sequence[kv_pb2.TxnCheck],
        ops: Sequence[kv_pb2.TxnOp],
        *,
        request_id: str,
        return_current: bool,
        fences: Sequence[common_pb2.Fence] = (),
    ) -> Mutation:
        violations = check_request_id("request_id", request_id)
        if not ops and not checks:
            violations.append(FieldViolation("ops", "a transaction needs at least one check or op"))
        if len(checks) > self.limits.max_txn_ops:
            violations.append(
                FieldViolation(
                    "checks", f"{len(checks)} checks exceed the limit of {self.limits.max_txn_ops}"
                )
            )
        if len(fences) > MAX_FENCES:
            violations.append(FieldViolation("fences", f"at most {MAX_FENCES} fences"))
        weight = sum(2 if op.WhichOneof("op") == "delete" else 1 for op in ops)
        if weight > self.limits.max_txn_ops:
            violations.append(
                FieldViolation(
                    "ops",
                    f"the ops weigh {weight} (a delete weighs 2: it also records who deleted); "
                    f"the limit is {self.limits.max_txn_ops} per transaction",
                )
            )
        parsed_checks: list[Check] = []
        for i, check in enumerate(checks):
            violations += check_key(f"checks[{i}].key", check.key, self.limits)
            violations += preconditions.check(f"checks[{i}].precondition", check.precondition)
            if not preconditions.is_set(check.precondition):
                violations.append(FieldViolation(f"checks[{i}].precondition", "must be set"))
            parsed_checks.append(Check(check.key, check.precondition, i))
        parsed_ops: list[Op] = []
        seen: set[str] = set()
        total = 0
        for i, op in enumerate(ops):
            kind = op.WhichOneof("op")
            if kind == "put":
                violations += check_key(f"ops[{i}].put.key", op.put.key, self.limits)
                violations += check_value(f"ops[{i}].put.value", op.put.value, self.limits)
                if op.put.lease_id < 0:
                    violations.append(
                        FieldViolation(f"ops[{i}].put.lease_id", "must not be negative")
                    )
                parsed_ops.append(Op(op.put.key, op.put.value, op.put.lease_id))
                total += len(op.put.key.encode()) + len(op.put.value)
            elif kind == "delete":
                violations += check_key(f"ops[{i}].delete.key", op.delete.key, self.limits)
                parsed_ops.append(Op(op.delete.key, None))
            else:
                violations.append(FieldViolation(f"ops[{i}]", "must be a put or a delete"))
                continue
            if parsed_ops[-1].key in seen:
                violations.append(
                    FieldViolation(
                        f"ops[{i}]", f"key {parsed_ops[-1].key!r} appears in more than one op"
                    )
                )
            seen.add(parsed_ops[-1].key)
        if total > self.limits.max_txn_bytes:
            violations.append(
                FieldViolation(
                    "ops", f"{total} bytes exceed the limit of {self.limits.max_txn_bytes}"
                )
            )
        self._require(violations)
        digest = fingerprint(
            b"txn",
            *(c.SerializeToString(deterministic=True) for c in checks),
            b"--",
            *(o.SerializeToString(deterministic=True) for o in ops),
            b"--",
            *_fence_bytes(fences),
        )
        return await self._mutate(
            parsed_checks,
            parsed_ops,
            list(fences),
            request_id=request_id,
            return_current=return_current,
            digest=digest,
        )

    async def _mutate(
        self,
        checks: list[Check],
        ops: list[Op],
        fences: list[common_pb2.Fence],
        *,
        request_id: str,
        return_current: bool,
        digest: bytes,
    ) -> Mutation:
        leases = {op.lease for op in ops if op.lease}
        if leases and self._leases is None:
            raise invalid("lease_id", "this coordinator has no lease service")
        if fences and self._locks is None:
            raise invalid("fence", "this coordinator has no lock service")
        try:
            for lease_id in sorted(leases):  # ephemeral keys hang only on the caller's leases
                assert self._leases is not None
                await self._leases.owned(lease_id)
            fence_compares = (
                await self._locks.fence_compares(fences) if fences and self._locks else []
            )
        except (Fenced, LeaseNotFound):
            # A retry of a write that applied while the lock or lease still held gets the
            # first answer, not a refusal of the retry.
            call = calls.current.get()
            if request_id:
                key = self._idempotency.key(call.namespace, call.agent_id, request_id)
                found = await self._etcd.range(rpc.RangeRequest(key=key))
                if found.kvs:
                    prior = Idempotency.prior(found.kvs[0], digest, request_id)
                    return await self._replay(
                        call.namespace, checks, ops, fences, prior, return_current
                    )
            raise
        for attempt in range(2):
            try:
                return await self._mutate_once(
                    checks,
                    ops,
                    fences,
                    fence_compares,
                    request_id=request_id,
                    return_current=return_current,
                    digest=digest,
                )
            except LeaseNotFound:
                if leases or attempt:
                    raise  # the caller's own lease ended: say so
                # The retention lease is gone (revoked by hand, a reset cluster): once more.
                self._retention.forget(await self._retention.current())
        raise AssertionError("unreachable")

    async def _mutate_once(
        self,
        checks: list[Check],
        ops: list[Op],
        fences: list[common_pb2.Fence],
        fence_compares: list[FenceCheck],
        *,
        request_id: str,
        return_current: bool,
        digest: bytes,
    ) -> Mutation:
        call = calls.current.get()
        ns = call.namespace
        provenance = common_pb2.Provenance(
            agent_id=call.agent_id, written_at=_now(), request_id=request_id
        )
        keys: set[bytes] = set()
        size = 64
        success: list[Any] = []
        lease = 0
        if request_id or any(op.value is None for op in ops):
            lease = await self._retention.current()
        for op in ops:
            data_key = self._data_key(ns, op.key)
            keys.add(data_key)
            if op.value is not None:
                stored = records_pb2.StoredValue(value=op.value, written_by=provenance)
                success.append(
                    put_op(data_key, stored.SerializeToString(), prev_kv=True, lease=op.lease)
                )
                size += len(data_key) + len(op.value) + 64
            else:
                tomb_key = self._tomb_key(ns, op.key)
                keys.add(tomb_key)
                success.append(
                    rpc.RequestOp(
                        request_delete_range=rpc.DeleteRangeRequest(key=data_key, prev_kv=True)
                    )
                )
                tombstone = records_pb2.Tombstone(deleted_by=provenance).SerializeToString()
                success.append(put_op(tomb_key, tombstone, lease=lease))
                size += 2 * len(data_key) + 64
        compares = [
            preconditions.compare(self._data_key(ns, c.key), c.precondition) for c in checks
        ]
        failure = [_range(self._data_key(ns, c.key)) for c in checks]
        for fence_check in fence_compares:  # read back to tell FENCED from CONDITION_FAILED
            compares.extend(fence_check.compares)
            failure.append(_range(fence_check.key))
        # Keys only compared still order this write against other writes to them.
        keys.update(self._data_key(ns, c.key) for c in checks)
        keys.update(f.key for f in fence_compares)
        inner = rpc.TxnRequest(compare=compares, success=success, failure=failure)
        if not request_id:
            weight = 1 + max(len(success), len(failure), len(compares))
            committed = await self._committer.commit(inner, keys, size, retry=False, weight=weight)
            await self._raise_if_fenced(fences, checks, committed.response)
            return self._outcome(
                ns, checks, ops, committed.response, committed.revision, return_current, provenance
            )

        idem_key = self._idempotency.key(ns, call.agent_id, request_id)
        keys.add(idem_key)
        wrapped = Idempotency.wrap(inner, idem_key, digest, lease)
        weight = 2 + max(len(inner.success), len(inner.failure), len(inner.compare))
        committed = await self._committer.commit(
            wrapped, keys, size + len(idem_key), retry=True, weight=weight
        )
        response, prior = Idempotency.unwrap(committed.response, digest, request_id)
        if prior is not None:
            return await self._replay(ns, checks, ops, fences, prior, return_current)
        try:
            await self._raise_if_fenced(fences, checks, response)
            done = self._outcome(
                ns, checks, ops, response, committed.revision, return_current, provenance
            )
        except (ConditionFailed, Fenced) as failed:
            self._idempotency.remember(
                idem_key,
                committed.revision,
                digest,
                applied=False,
                answer=failed.to_status().SerializeToString(),
            )
            raise
        answer = kv_pb2.TxnResponse(revision=done.revision, results=done.results)
        self._idempotency.remember(
            idem_key, committed.revision, digest, applied=True, answer=answer.SerializeToString()
        )
        return done

    async def _raise_if_fenced(
        self,
        fences: list[common_pb2.Fence],
        checks: list[Check],
        response: Any,
    ) -> None:
        """A refused write whose fence entry is gone (or not granted) was fenced."""
        if response.succeeded or not fences or self._locks is None:
            return
        reads = response.responses[len(checks) : len(checks) + len(fences)]
        for fence, read in zip(fences, reads, strict=True):
            raw = read.response_range.kvs[0] if read.response_range.kvs else None
            if raw is None or raw.create_revision != fence.token:
                raise await self._locks.fenced(fence)

    def _outcome(
        self,
        ns: str,
        checks: list[Check],
        ops: list[Op],
        response: Any,
        revision: int,
        return_current: bool,
        provenance: common_pb2.Provenance,
    ) -> Mutation:
        if not response.succeeded:
            currents = [
                r.response_range.kvs[0] if r.response_range.kvs else None
                for r in response.responses[: len(checks)]
            ]
            raise self._condition_failed(ns, checks, currents, revision, return_current)
        results: list[kv_pb2.TxnOpResult] = []
        responses = iter(response.responses)
        for op in ops:
            item = next(responses)
            if op.value is not None:
                prev = item.response_put.prev_kv if item.response_put.HasField("prev_kv") else None
                written = kv_pb2.KeyValue(
                    key=op.key,
                    value=op.value,
                    create_revision=prev.create_revision if prev else revision,
                    mod_revision=revision,
                    version=(prev.version + 1) if prev else 1,
                    written_by=provenance,
                )
                results.append(kv_pb2.TxnOpResult(kv=written))
            else:
                prevs = item.response_delete_range.prev_kvs
                next(responses)  # the tombstone put
                if prevs:
                    results.append(kv_pb2.TxnOpResult(kv=self._to_kv(ns, prevs[0]), deleted=True))
                else:
                    results.append(kv_pb2.TxnOpResult(deleted=False))
        return Mutation(revision, results, replayed=False)

    async def _replay(
        self,
        ns: str,
        checks: list[Check],
        ops: list[Op],
        fences: list[common_pb2.Fence],
        prior: Prior,
        return_current: bool,
    ) -> Mutation:
        """Answer a retry as the first attempt was answered."""
        record, revision = prior.record, prior.revision
        if record.answer:
            if not record.applied:
                raise StoredFailure(status_pb2.Status.FromString(record.answer))
            first = kv_pb2.TxnResponse.FromString(record.answer)
            return Mutation(first.revision, list(first.results), replayed=True)
        # The first answer was never stored (its replica died right after the commit):
        # rebuild it from etcd's history at that revision, as far as it still exists.
        if not record.applied and fences:
            raise Fenced(
                "this request was refused when first sent: its fence (or a "
                "precondition) did not hold",
                metadata={"revision": str(revision)},
            )
        if not record.applied:
            currents = await asyncio.gather(
                *(self._raw_at(self._data_key(ns, c.key), revision) for c in checks)
            )
            raise self._condition_failed(ns, checks, list(currents), revision, return_current)
        results: list[kv_pb2.TxnOpResult] = []
        for op in ops:
            data_key = self._data_key(ns, op.key)
            if op.value is not None:
                raw = await self._raw_at(data_key, revision)
                kv = (
                    self._to_kv(ns, raw)
                    if raw
                    else kv_pb2.KeyValue(key=op.key, value=op.value, mod_revision=revision)
                )
                results.append(kv_pb2.TxnOpResult(kv=kv))
            else:
                before = await self._raw_at(data_key, revision - 1)
                if before is None:
                    results.append(kv_pb2.TxnOpResult(deleted=False))
                else:
                    results.append(kv_pb2.TxnOpResult(kv=self._to_kv(ns, before), deleted=True))
        return Mutation(revision, results, replayed=True)

    async def _raw_at(self, key: bytes, revision: int) -> Any | None:
        try:
            response = await self._etcd.range(rpc.RangeRequest(key=key, revision=revision))
        except Compacted:
            return None
        return response.kvs[0] if response.kvs else None

    def _condition_failed(
        self,
        ns: str,
        checks: list[Check],
        currents: list[Any | None],
        revision: int,
        return_current: bool,
    ) -> ConditionFailed:
        failures: list[kv_pb2.ConditionFailure] = []
        for check, raw in zip(checks, currents, strict=True):
            if preconditions.holds(check.precondition, raw):
                continue
            failure = kv_pb2.ConditionFailure(
                key=check.key,
                expected=check.precondition,
                exists=raw is not None,
                revision=revision,
                check_index=check.index,
            )
            if raw is not None:
                failure.current_mod_revision = raw.mod_revision
                failure.current_version = raw.version
                failure.current_create_revision = raw.create_revision
                if return_current:
                    failure.current.CopyFrom(self._to_kv(ns, raw))
            failures.append(failure)
        if not failures:  # every check holds now: the state moved between attempt and replay
            failures.append(kv_pb2.ConditionFailure(key=checks[0].key, revision=revision))
        first = failures[0]
        state = (
            f"it is at mod_revision {first.current_mod_revision} (version {first.current_version})"
            if first.exists
            else "it does not exist"
        )
        message = (
            f"condition on key {first.key!r} failed: expected "
            f"{preconditions.describe(first.expected)}, but "
            f"{state} at revision {revision}; read it again and retry with the new revision"
        )
        if len(failures) > 1:
            message += f" ({len(failures)} checks failed)"
        return ConditionFailed(
            message,
            details=failures,
            metadata={
                "key": first.key,
                "exists": str(first.exists).lower(),
                "current_mod_revision": str(first.current_mod_revision),
                "current_version": str(first.current_version),
            },
        )

    # --- watch and history --------------------------------------------------------

    async def watch(
        self, key: str, *, prefix: bool, start_revision: int, prev_kv: bool
    ) -> AsyncIterator[WatchBatch]:
        self._require(
            check_key("key", key, self.limits, allow_empty=prefix)
            + _check_revision("start_revision", start_revision)
        )
        ns = calls.current.get().namespace
        start = self._data_key(ns, key)
        create = rpc.WatchCreateRequest(
            key=start,
            range_end=prefix_end(start) if prefix else b"",
            start_revision=start_revision,
            prev_kv=prev_kv,
        )
        async for response in self._etcd.watch(create):
            if response.created:
                resume = start_revision or response.header.revision + 1
                yield WatchBatch(response.header.revision, [], resume)
                continue
            if not response.events:
                continue  # a progress notice: not proof that history was delivered (etcd 3.4)
            events = [self._to_event(ns, event) for event in response.events]
            yield WatchBatch(
                response.header.revision, events, response.events[-1].kv.mod_revision + 1
            )

    async def history(self, key: str, *, limit: int, before_revision: int) -> History:
        violations = check_key("key", key, self.limits)
        violations += _check_revision("before_revision", before_revision)
        if limit < 0 or limit > MAX_HISTORY_LIMIT:
            violations.append(FieldViolation("limit", f"must be between 0 and {MAX_HISTORY_LIMIT}"))
        self._require(violations)
        ns = calls.current.get().namespace
        data_key, tomb_key = self._data_key(ns, key), self._tomb_key(ns, key)
        limit = limit or DEFAULT_HISTORY_LIMIT
        head = await self._etcd.range(rpc.RangeRequest(key=data_key, count_only=True))
        now = head.header.revision
        if before_revision > now + 1:
            raise invalid(
                "before_revision",
                f"revision {before_revision} is in the future (the current revision is {now})",
            )
        cursor = before_revision - 1 if before_revision else now
        entries: list[kv_pb2.HistoryEntry] = []
        truncated = False
        # Walk back one change at a time: the value at `cursor`, then just before it; at a
        # gap, the tombstone says when and by whom the previous incarnation was deleted.
        while cursor >= 1 and len(entries) < limit:
            try:
                raw = await self._raw_at_strict(data_key, cursor)
                if raw is not None:
                    kv = self._to_kv(ns, raw)
                    entries.append(
                        kv_pb2.HistoryEntry(
                            kind=kv_pb2.HistoryEntry.KIND_PUT,
                            revision=raw.mod_revision,
                            kv=kv,
                            changed_by=kv.written_by,
                        )
                    )
                    cursor = raw.mod_revision - 1
                    continue
                tomb = await self._raw_at_strict(tomb_key, cursor)
                if tomb is None:
                    cursor = 0
                    break
                deleted_at = tomb.mod_revision
                if await self._raw_at_strict(data_key, deleted_at - 1) is not None:
                    stone = records_pb2.Tombstone.FromString(tomb.value)
                    entries.append(
                        kv_pb2.HistoryEntry(
                            kind=kv_pb2.HistoryEntry.KIND_DELETE,
                            revision=deleted_at,
                            kv=kv_pb2.KeyValue(key=key, mod_revision=deleted_at),
                            changed_by=stone.deleted_by,
                        )
                    )
                cursor = deleted_at - 1
            except Compacted:
                truncated = True
                cursor = 0
        return History(now, entries, cursor + 1 if cursor >= 1 else 0, truncated)

    async def _raw_at_strict(self, key: bytes, revision: int) -> Any | None:
        response = await self._etcd.range(rpc.RangeRequest(key=key, revision=revision))
        return response.kvs[0] if response.kvs else None

    # --- conversions --------------------------------------------------------------

    def _to_kv(self, ns: str, raw: Any) -> kv_pb2.KeyValue:
        key = raw.key[len(self._data_prefix(ns)) :].decode("utf-8", "replace")
        kv = kv_pb2.KeyValue(
            key=key,
            create_revision=raw.create_revision,
            mod_revision=raw.mod_revision,
            version=raw.version,
        )
        if raw.value:
            try:
                stored = records_pb2.StoredValue.FromString(raw.value)
            except DecodeError:
                kv.value = raw.value  # written around Accord: show the bytes as they are
            else:
                kv.value = stored.value
                kv.written_by.CopyFrom(stored.written_by)
        return kv

    def _to_event(self, ns: str, event: Any) -> kv_pb2.WatchEvent:
        out = kv_pb2.WatchEvent(
            type=kv_pb2.WatchEvent.TYPE_DELETE if event.type == 1 else kv_pb2.WatchEvent.TYPE_PUT,
            kv=self._to_kv(ns, event.kv),
        )
        if event.HasField("prev_kv"):
            out.prev_kv.CopyFrom(self._to_kv(ns, event.prev_kv))
        return out

    @staticmethod
    def _require(violations: list[FieldViolation]) -> None:
        if violations:
            raise InvalidArgument(violations)


@dataclass(frozen=True, slots=True)
class _ListCursor:
    revision: int
    total: int
    after_key: str

    def encode(self) -> str:
        raw = f"{self.revision}:{self.total}:{self.after_key}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(token: str) -> _ListCursor | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            revision, total, after_key = raw.split(":", 2)
            return _ListCursor(int(revision), int(total), after_key)
        except (ValueError, UnicodeDecodeError):
            return None


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def _range(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def _fence_bytes(fences: Sequence[common_pb2.Fence]) -> list[bytes]:
    return [f.SerializeToString(deterministic=True) for f in fences]


def _single_check(key: str, precondition: kv_pb2.Precondition | None) -> list[Check]:
    if precondition is None or not preconditions.is_set(precondition):
        return []
    return [Check(key, precondition, 0)]


def _bytes(precondition: kv_pb2.Precondition | None) -> bytes:
    return precondition.SerializeToString(deterministic=True) if precondition else b""


def _check_revision(field: str, revision: int) -> list[FieldViolation]:
    return [FieldViolation(field, "must not be negative")] if revision < 0 else []
