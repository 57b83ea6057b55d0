"""The one at-most-once write: every mutation that carries a request_id goes through
Writes.apply, and every write on the retention lease through Writes.commit.

A mutation that carries a request_id runs inside an outer etcd transaction guarded by
"no record for this request_id yet"; its record is written by the same transaction, in
both outcomes, so the record exists exactly when the mutation took effect (or was
refused by its preconditions). A retry, on any replica, finds the record instead.

The record's mod_revision is the commit's revision, and a primitive whose answer follows
from that revision and etcd's history at it (a KV put, say) says so (`answer` gives
None): the write is then one etcd write, and a retry rebuilds the answer (its `replay`).
Any other answer (a refusal, a delete's, which history may lose to compaction) is added
to the record right after the commit, batched, in the background, so a retry gets that
exact answer even after etcd compacted the history; should the replica die in between,
`replay` rebuilds it from etcd at the record's revision, as far as etcd still has it.

Records hang on a retention lease, so etcd forgets them after the configured time; if
that lease is gone (revoked by hand, a reset cluster) the write goes once more on a fresh
one. Layout: keyspace.idem (neither agent nor request_id may contain NUL).

Error handling: a refusal the primitive raises from `act` (an AccordError) is recorded
as the answer too, so a retry is refused the same way; an outage or deadline met while
wording it, and anything else, propagates unrecorded, and the retry rebuilds its answer
through `replay`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from accord.coordinator import logs
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    AccordError,
    BackendUnavailable,
    DeadlineExceeded,
    Internal,
    LeaseNotFound,
    RequestIdReused,
)
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.group_commit import Committed, GroupCommitter
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.retention import RetentionLeases
from accord.coordinator.substrate.txn import (
    KeyValue,
    Txn,
    add_put,
    around,
    get,
    mod_is,
    put,
    read,
    txn,
    version_is,
)
from accord.v1 import records_pb2

_log = logs.get("accord.idempotency")
REMEMBER_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Prior:
    """A request_id seen before: its record, and the revision the first attempt had."""

    record: records_pb2.IdempotencyRecord
    revision: int


def fingerprint(*parts: bytes) -> bytes:
    """What a request_id was first used for: a retry must send the same parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()[:16]


def wrap(inner: Txn, key: bytes, digest: bytes, lease: int) -> Txn:
    """inner, run only on the first attempt, with the record added to both its branches.
    inner is extended in place (copying it would cost every write): build a fresh one for
    each attempt."""
    record = records_pb2.IdempotencyRecord(fingerprint=digest, applied=True)
    add_put(inner.success, key, record.SerializeToString(), lease=lease)
    if len(inner.compare):
        record.applied = False
        add_put(inner.failure, key, record.SerializeToString(), lease=lease)
    return around(  # run inner...
        inner,
        when=[version_is(key, 0)],  # ...if there is no record yet: this is the first attempt
        otherwise=[get(key)],  # the record: the retry learns what happened
    )


def prior_of(raw: KeyValue, digest: bytes, request_id: str) -> Prior:
    """The earlier attempt recorded in raw, if it was this request; else REQUEST_ID_REUSED."""
    record = records_pb2.IdempotencyRecord.FromString(raw.value)
    if record.fingerprint != digest:
        raise RequestIdReused(
            f"request_id {request_id!r} was already used by this agent for a different "
            f"request (at revision {raw.mod_revision}); use a fresh request_id for a new "
            "request",
            metadata={"request_id": request_id, "revision": str(raw.mod_revision)},
        )
    return Prior(record, raw.mod_revision)


class Writes:
    """Mutations applied at most once per (agent, request_id), with the first answer kept."""

    def __init__(
        self,
        etcd: Etcd,
        keys: Keyspace,
        committer: GroupCommitter,
        retention: RetentionLeases,
    ) -> None:
        self._etcd = etcd
        self._keys = keys
        self._committer = committer
        self._retention = retention
        self._tasks: set[asyncio.Task[None]] = set()

    async def apply(
        self,
        build: Callable[[int], Txn],
        *,
        request_id: str,
        digest: bytes,
        act: Callable[[Committed], Awaitable[T]],
        replay: Callable[[Prior], Awaitable[T]],
        answer: Callable[[T], Message | None],
        retained: bool = False,
        batched: bool = True,
        stable: Iterable[bytes] = (),
    ) -> T:
        """Commit build(retention lease) once; return act(its outcome), or on a retry
        replay(the first attempt's record).

        build: the mutation as one etcd transaction, made anew on each call; it gets the
        retention lease when it asked for one (retained, for records that should expire)
        and 0 otherwise.
        act: the answer to the first attempt (may raise a refusal, which is recorded).
        answer: what a retry should get back, given act's result; None when replay
        rebuilds it from the record's revision alone (nothing more is written).
        batched: through group commit (False: straight to etcd, for a transaction whose
        compares must see every earlier write, such as a range compare).
        stable: keys only read that no batched write changes (GroupCommitter.commit)."""
        call = calls.current.get()
        if not request_id:
            return await act(
                await self.commit(build, retained=retained, batched=batched, stable=stable)
            )
        key = self._keys.idem(call.namespace, call.agent_id, request_id)
        committed = await self.commit(
            lambda lease: wrap(build(lease), key, digest, lease),
            retained=True,
            batched=batched,
            retry=True,  # the record makes it safe to repeat
            stable=stable,
        )
        if not committed.response.succeeded:
            raw = committed.response.responses[0].response_range.kvs[0]
            prior = prior_of(raw, digest, request_id)
            accord_metrics.replayed(call.namespace)
            return await replay(prior)
        first = Committed(committed.response.responses[0].response_txn, committed.revision)
        try:
            result = await act(first)
        except AccordError as refused:
            # A refusal is the answer; an outage while wording it is not: the retry then
            # rebuilds the refusal through replay.
            if not isinstance(refused, BackendUnavailable | DeadlineExceeded | Internal):
                self._remember(key, first.revision, digest, False, refused.to_status())
            raise
        stored = answer(result)
        if stored is not None:
            self._remember(key, first.revision, digest, True, stored)
        return result

    async def commit(
        self,
        build: Callable[[int], Txn],
        *,
        retained: bool = False,
        batched: bool = True,
        retry: bool = False,
        stable: Iterable[bytes] = (),
    ) -> Committed:
        """Commit build(retention lease) (0 unless retained); if etcd no longer knows the
        retention lease, once more on a fresh one. retry: safe to repeat on failover."""
        for attempt in range(2):
            lease = await self._retention.current() if retained else 0
            request = build(lease)
            try:
                if batched:
                    return await self._committer.commit(request, retry=retry, stable=stable)
                response = await self._etcd.txn(request, retry=retry)
                return Committed(response, int(response.header.revision))
            except LeaseNotFound:
                # Another lease in the write may be what ended; only a lost retention
                # lease is worth a second attempt.
                if attempt or not lease or await self._retention.alive(lease):
                    raise
                self._retention.forget(lease)
        raise AssertionError("unreachable")

    async def prior(
        self, request_id: str, digest: bytes, *, answering: bool = True
    ) -> Prior | None:
        """The record of an earlier attempt with this request_id, if there was one (for a
        write that checks before it builds: a retry may find its lock or lease gone).
        answering: the caller answers the retry from it (counted as a replay); False for
        a look that goes on to apply(), which counts it."""
        if not request_id:
            return None
        call = calls.current.get()
        key = self._keys.idem(call.namespace, call.agent_id, request_id)
        found = await self._etcd.range(read(key))
        if not found.kvs:
            return None
        prior = prior_of(found.kvs[0], digest, request_id)
        if answering:
            accord_metrics.replayed(call.namespace)
        return prior

    async def drain(self, timeout: float) -> None:
        """Let answers being stored finish (on shutdown), for at most timeout seconds: a
        retry then gets the stored answer instead of one rebuilt from history."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def _remember(
        self, key: bytes, revision: int, digest: bytes, applied: bool, answer: Message
    ) -> None:
        """Add the answer to the record written at revision (in the background)."""
        record = records_pb2.IdempotencyRecord(
            fingerprint=digest, applied=applied, answer=answer.SerializeToString()
        )
        request = txn(
            when=[mod_is(key, revision)],
            then=[put(key, record.SerializeToString(), keep_lease=True)],
        )

        async def store() -> None:
            calls.current.set(
                calls.Call(
                    namespace="",
                    agent_id="",
                    trace_id="remember",
                    deadline=time.monotonic() + REMEMBER_TIMEOUT_SECONDS,
                )
            )
            try:
                await self._committer.commit(request, retry=True)
            except AccordError as exc:  # the retry will rebuild the answer from history
                _log.info("could not store an idempotent answer", error=exc.message)

        task = asyncio.create_task(store())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
