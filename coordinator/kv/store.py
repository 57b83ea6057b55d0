"""Versioned shared memory: keys with revisions, conditional writes, transactions,
watches and history, per namespace.

Guarantees: every write records its agent and time; a conditional write applies only if
its precondition holds at commit, otherwise CONDITION_FAILED reports the key's current
state; a write with a request_id applies at most once, and a retry on any replica gets
the first outcome (the record is written in the same etcd Txn as the effect). All
writes go through group commit, which changes no single write's semantics.

etcd layout (keyspace.py): kv/{key} holds a StoredValue (value + provenance);
tomb/{key} a Tombstone saying who deleted the key (on the retention lease).

Error handling: bad input is INVALID_ARGUMENT before anything is read; a precondition
that does not hold is CONDITION_FAILED with each failed key's current state; a lost
fence is FENCED; an ended lease is LEASE_NOT_FOUND; a reused request_id with other
content is REQUEST_ID_REUSED. A retry of a write that took effect gets its first answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from google.rpc import status_pb2

from accord.coordinator.kv import breaks
from accord.coordinator.kv import history as changes
from accord.coordinator.kv.history import raw_at
from accord.coordinator.kv.model import (
    Check,
    History,
    ListCursor,
    Mutation,
    Op,
    Page,
    WatchBatch,
    check_revision,
    condition_failed,
    fit_results,
    now,
    precondition_bytes,
    single_check,
    to_kv,
)
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.fencing import FenceGuard, Fencing, fence_bytes
from accord.coordinator.observability import accord_metrics, trace_context
from accord.coordinator.substrate import Substrate, calls, preconditions
from accord.coordinator.substrate.errors import (
    Compacted,
    Fenced,
    FieldViolation,
    InvalidArgument,
    LeaseNotFound,
    StoredFailure,
    invalid,
)
from accord.coordinator.substrate.group_commit import Committed
from accord.coordinator.substrate.idempotency import Prior, fingerprint
from accord.coordinator.substrate.limits import (
    check_enum,
    check_key,
    check_request_id,
    check_value,
    require_counts,
)
from accord.coordinator.substrate.pages import PageBudget
from accord.coordinator.substrate.txn import KeyValue, Txn, delete, get, put, read, txn
from accord.v1 import common_pb2, kv_pb2, records_pb2

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
# One etcd read of a List page holds at most this many bytes of the largest values
# (a page itself stays under pages.MAX_PAGE_BYTES).
ETCD_CHUNK_BYTES = 8 * 1024 * 1024
MAX_FENCES = 8


class KVStore:
    def __init__(self, substrate: Substrate, leases: LeaseStore, fencing: Fencing) -> None:
        self._s = substrate
        self._leases = leases
        self._fencing = fencing
        self.limits = substrate.limits

    def _prefix(self, namespace: str) -> bytes:
        return self._s.keys.kv_prefix(namespace)

    async def watch(
        self, key: str, *, prefix: bool, start_revision: int, prev_kv: bool
    ) -> AsyncIterator[WatchBatch]:
        """Changes from start_revision on (0: from now), resumable from any batch's
        resume_revision."""
        _require(
            check_key("key", key, self.limits, allow_empty=prefix)
            + check_revision("start_revision", start_revision)
        )
        if start_revision > 1:  # a resume point is at most one past the newest revision
            ns = calls.current.get().namespace
            now = await self._s.etcd.range(read(self._s.keys.kv(ns, key), count_only=True))
            if start_revision > now.header.revision + 1:
                raise invalid(
                    "start_revision",
                    f"{start_revision} is in the future: etcd is at revision "
                    f"{now.header.revision} (watch from at most {now.header.revision + 1})",
                )
        async for batch in changes.watch(
            self._s, key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv
        ):
            yield batch

    async def history(self, key: str, *, limit: int, before_revision: int) -> History:
        """Who changed key and how, newest first, as far back as etcd still holds."""
        violations = check_key("key", key, self.limits)
        violations += check_revision("before_revision", before_revision)
        if limit < 0 or limit > changes.MAX_HISTORY_LIMIT:
            violations.append(
                FieldViolation("limit", f"must be between 0 and {changes.MAX_HISTORY_LIMIT}")
            )
        _require(violations)
        return await changes.walk(self._s, key, limit=limit, before_revision=before_revision)

    # --- reads --------------------------------------------------------------------

    async def get(
        self, key: str, consistency: int, revision: int
    ) -> tuple[int, kv_pb2.KeyValue | None]:
        violations = check_key("key", key, self.limits) + check_revision("revision", revision)
        _require(violations + check_enum("consistency", consistency, kv_pb2.Consistency.DESCRIPTOR))
        ns = calls.current.get().namespace
        stored = self._s.keys.kv(ns, key)
        if breaks.STALE_READS and not revision and (cached := breaks.cached_read(stored)):
            return cached
        request = read(stored, revision=revision)
        request.serializable = consistency == kv_pb2.CONSISTENCY_SERIALIZABLE
        response = await self._s.etcd.range(request)
        kv = to_kv(self._prefix(ns), response.kvs[0]) if response.kvs else None
        if breaks.STALE_READS:
            breaks.remember_read(stored, (response.header.revision, kv))
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
        violations += check_revision("revision", revision)
        violations += check_enum("consistency", consistency, kv_pb2.Consistency.DESCRIPTOR)
        if limit < 0 or limit > MAX_LIST_LIMIT:
            violations.append(FieldViolation("limit", f"must be between 0 and {MAX_LIST_LIMIT}"))
        cursor = ListCursor.decode(page_token) if page_token else None
        if page_token and cursor is None:
            violations.append(FieldViolation("page_token", "is not a token this service issued"))
        _require(violations)
        ns = calls.current.get().namespace
        wanted = limit or DEFAULT_LIST_LIMIT
        # Each etcd read is bounded too: at most ETCD_CHUNK_BYTES of the largest values.
        per_entry = self.limits.max_value_bytes + self.limits.max_key_bytes + 256
        chunk = wanted if keys_only else max(1, ETCD_CHUNK_BYTES // per_entry)
        base = self._s.keys.kv(ns, prefix)
        request = read(base, prefix=True, revision=cursor.revision if cursor else revision)
        if cursor is not None:
            request.key = self._s.keys.kv(ns, cursor.after_key) + b"\x00"
        request.keys_only = keys_only
        request.serializable = consistency == kv_pb2.CONSISTENCY_SERIALIZABLE
        budget = PageBudget()
        kvs: list[kv_pb2.KeyValue] = []
        full = False
        total = cursor.total if cursor else -1
        while True:
            request.limit = min(wanted - len(kvs), chunk)
            response = await self._s.etcd.range(request)
            if total < 0:  # the first read counts every key under the prefix
                total = response.count
            if request.revision == 0:  # later chunks read the first one's revision
                request.revision = response.header.revision
            for raw in response.kvs:
                kv = to_kv(self._prefix(ns), raw)
                if not budget.take(kv):
                    full = True
                    break
                kvs.append(kv)
            if full or not response.more or len(kvs) >= wanted:
                break
            request.key = response.kvs[-1].key + b"\x00"
        token = ""
        if (full or response.more) and kvs:
            token = ListCursor(request.revision, total, kvs[-1].key).encode()
        return Page(request.revision, kvs, token, total)

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
        _require(violations)
        fences = [fence] if fence is not None else []
        digest = fingerprint(
            b"put",
            key.encode(),
            value,
            precondition_bytes(precondition),
            str(lease_id).encode(),
            *fence_bytes(fences),
        )
        return await self._mutate(
            single_check(key, precondition),
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
        _require(violations)
        fences = [fence] if fence is not None else []
        digest = fingerprint(
            b"delete", key.encode(), precondition_bytes(precondition), *fence_bytes(fences)
        )
        return await self._mutate(
            single_check(key, precondition),
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
        require_counts(
            ("checks", len(checks), self.limits.max_txn_ops),
            ("ops", len(ops), self.limits.max_txn_ops),
            ("fences", len(fences), MAX_FENCES),
        )
        violations = check_request_id("request_id", request_id)
        if not ops and not checks:
            violations.append(FieldViolation("ops", "a transaction needs at least one check or op"))
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
        # Each value stored records the caller's trace context beside it.
        traced = trace_context.size_of(calls.current.get().trace_context)
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
                total += len(op.put.key.encode()) + len(op.put.value) + traced
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
        _require(violations)
        digest = fingerprint(
            b"txn",
            *(c.SerializeToString(deterministic=True) for c in checks),
            b"--",
            *(o.SerializeToString(deterministic=True) for o in ops),
            b"--",
            *fence_bytes(fences),
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
        ns = calls.current.get().namespace
        try:
            for lease_id in sorted({op.lease for op in ops if op.lease}):
                await self._leases.owned(lease_id)  # ephemeral keys hang on the caller's leases
            guard = await self._fencing.guard(fences, counted=False)
        except (Fenced, LeaseNotFound) as refused:
            # A retry of a write that applied while the lock or lease still held gets the
            # first answer, not a refusal of the retry.
            prior = await self._s.writes.prior(request_id, digest)
            if prior is not None:
                return await self._replay(ns, checks, ops, fences, prior, return_current)
            if isinstance(refused, Fenced):
                accord_metrics.fence_rejected(ns)
            raise
        call = calls.current.get()
        provenance = common_pb2.Provenance(
            agent_id=call.agent_id,
            written_at=now(),
            request_id=request_id,
            principal=call.principal,
            trace_context=trace_context.record_of(call.trace_context),
        )

        def build(lease: int) -> Txn:
            return self._txn(ns, checks, ops, guard, provenance, lease)

        async def act(committed: Committed) -> Mutation:
            response = committed.response
            if not response.succeeded:
                reads = response.responses[len(checks) :]
                broken = guard.broken(reads)
                if broken is not None:
                    raise await self._fencing.fenced(broken)
            return self._outcome(ns, checks, ops, committed, return_current, provenance)

        async def replay(prior: Prior) -> Mutation:
            return await self._replay(ns, checks, ops, fences, prior, return_current)

        return await self._s.writes.apply(
            build,
            request_id=request_id,
            digest=digest,
            act=act,
            replay=replay,
            answer=lambda done: _stored_answer(ops, done),
            retained=any(op.value is None for op in ops),  # tombstones expire
        )

    def _txn(
        self,
        ns: str,
        checks: list[Check],
        ops: list[Op],
        guard: FenceGuard,
        provenance: common_pb2.Provenance,
        retention_lease: int,
    ) -> Txn:
        """The write: every op if every check and fence holds; else read back the checked
        keys and the fences' entries, to say which failed."""
        effects = []
        for op in ops:
            data_key = self._s.keys.kv(ns, op.key)
            if op.value is not None:
                stored = records_pb2.StoredValue(value=op.value, written_by=provenance)
                effects.append(
                    put(data_key, stored.SerializeToString(), prev_kv=True, lease=op.lease)
                )
            else:
                tombstone = records_pb2.Tombstone(deleted_by=provenance).SerializeToString()
                effects.append(delete(data_key, prev_kv=True))
                effects.append(put(self._s.keys.tomb(ns, op.key), tombstone, lease=retention_lease))
        checked = [self._s.keys.kv(ns, c.key) for c in checks]
        conditions = [
            preconditions.compare(k, c.precondition) for k, c in zip(checked, checks, strict=True)
        ]
        return txn(
            when=[*conditions, *guard.compares],
            then=effects,
            otherwise=[*(get(k) for k in checked), *guard.reads],
        )

    def _outcome(
        self,
        ns: str,
        checks: list[Check],
        ops: list[Op],
        committed: Committed,
        return_current: bool,
        provenance: common_pb2.Provenance,
    ) -> Mutation:
        response, revision = committed.response, committed.revision
        prefix = self._prefix(ns)
        if not response.succeeded:
            currents = [
                r.response_range.kvs[0] if r.response_range.kvs else None
                for r in response.responses[: len(checks)]
            ]
            raise condition_failed(prefix, checks, currents, revision, return_current)
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
                    results.append(kv_pb2.TxnOpResult(kv=to_kv(prefix, prevs[0]), deleted=True))
                else:
                    results.append(kv_pb2.TxnOpResult(deleted=False))
        fit_results(results)
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
        prefix = self._prefix(ns)
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
                *(self._raw_at(self._s.keys.kv(ns, c.key), revision) for c in checks)
            )
            raise condition_failed(prefix, checks, list(currents), revision, return_current)
        results: list[kv_pb2.TxnOpResult] = []
        for op in ops:
            data_key = self._s.keys.kv(ns, op.key)
            if op.value is not None:
                raw = await self._put_at(data_key, revision)
                kv = (
                    to_kv(prefix, raw)
                    if raw
                    else kv_pb2.KeyValue(key=op.key, value=op.value, mod_revision=revision)
                )
                results.append(kv_pb2.TxnOpResult(kv=kv))
            else:
                before = await self._raw_at(data_key, revision - 1)
                if before is None:
                    results.append(kv_pb2.TxnOpResult(deleted=False))
                else:
                    results.append(kv_pb2.TxnOpResult(kv=to_kv(prefix, before), deleted=True))
        fit_results(results)
        return Mutation(revision, results, replayed=True)

    async def _raw_at(self, key: bytes, revision: int) -> KeyValue | None:
        try:
            return await raw_at(self._s.etcd, key, revision)
        except Compacted:
            return None

    async def _put_at(self, key: bytes, revision: int) -> KeyValue | None:
        """What a put committed at revision wrote: from history, or once etcd compacted
        it, the key as it is now if nothing changed it since (else None: unknown)."""
        try:
            return await raw_at(self._s.etcd, key, revision)
        except Compacted:
            current = (await self._s.etcd.range(read(key))).kvs
            return current[0] if current and current[0].mod_revision == revision else None


def _stored_answer(ops: Sequence[Op], done: Mutation) -> kv_pb2.TxnResponse | None:
    """What the idempotency record must hold for a retry: nothing when every op is a put,
    whose result _replay rebuilds from the record's revision (history at it, or the key
    itself while unchanged); a delete's result (what it removed) is kept, since history
    before the revision may be compacted."""
    if all(op.value is not None for op in ops):
        return None
    return kv_pb2.TxnResponse(revision=done.revision, results=done.results)


def _require(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)
