"""At most once per request_id, and the same answer every time.

A mutation that carries a request_id runs inside an outer etcd transaction guarded by
"no record for this request_id yet"; its record is written by the same transaction, in
both outcomes, so the record exists exactly when the mutation took effect (or was
refused by its preconditions). A retry, on any replica, finds the record instead.

Right after the commit, the answer given to the caller is added to the record (batched,
in the background), so a retry gets that exact answer even after etcd compacted the
history it was computed from. Should the replica die in between, the caller rebuilds
the answer from etcd's history at the record's revision.

Records hang on a retention lease, so etcd forgets them after the configured time.
Layout: {root}/ns/{namespace}/idem/{agent}\\0{request_id} (neither part may contain NUL).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aetcd.rpc import rpc_pb2 as rpc

from accord.coordinator import logs
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import AccordError, LeaseNotFound, RequestIdReused
from accord.coordinator.substrate.etcd import put_op
from accord.coordinator.substrate.group_commit import GroupCommitter
from accord.coordinator.substrate.retention import RetentionLeases
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
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()[:16]


async def send_retained(
    retention: RetentionLeases,
    inner: Any,
    key: bytes,
    digest: bytes,
    send: Callable[[Any], Awaitable[T]],
) -> T:
    """Send inner wrapped with its idempotency record on the retention lease; if that
    lease is gone (revoked by hand, a reset cluster), once more on a fresh one."""
    for attempt in range(2):
        lease = await retention.current()
        copy = rpc.TxnRequest()
        copy.CopyFrom(inner)
        try:
            return await send(Idempotency.wrap(copy, key, digest, lease))
        except LeaseNotFound:
            if attempt:
                raise
            retention.forget(lease)
    raise AssertionError("unreachable")


class Idempotency:
    def __init__(self, root: str, committer: GroupCommitter) -> None:
        self._root = root
        self._committer = committer
        self._tasks: set[asyncio.Task[None]] = set()

    def key(self, namespace: str, agent: str, request_id: str) -> bytes:
        return f"{self._root}/ns/{namespace}/idem/{agent}\x00{request_id}".encode()

    @staticmethod
    def wrap(inner: Any, key: bytes, digest: bytes, lease: int) -> Any:
        """Add the record to both branches of inner; run inner only on the first attempt."""
        applied = records_pb2.IdempotencyRecord(fingerprint=digest, applied=True)
        inner.success.append(put_op(key, applied.SerializeToString(), lease=lease))
        if len(inner.compare):
            refused = records_pb2.IdempotencyRecord(fingerprint=digest, applied=False)
            inner.failure.append(put_op(key, refused.SerializeToString(), lease=lease))
        return rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
                )
            ],
            success=[rpc.RequestOp(request_txn=inner)],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )

    @staticmethod
    def unwrap(response: Any, digest: bytes, request_id: str) -> tuple[Any, Prior | None]:
        """(inner response, None) on a first attempt; (None, Prior) on a retry."""
        if response.succeeded:
            return response.responses[0].response_txn, None
        return None, Idempotency.prior(
            response.responses[0].response_range.kvs[0], digest, request_id
        )

    @staticmethod
    def prior(raw: Any, digest: bytes, request_id: str) -> Prior:
        """The earlier attempt recorded in raw (an etcd KeyValue), if it was this request."""
        record = records_pb2.IdempotencyRecord.FromString(raw.value)
        if record.fingerprint != digest:
            raise RequestIdReused(
                f"request_id {request_id!r} was already used by this agent for a different "
                f"request (at revision {raw.mod_revision}); use a fresh request_id for a new "
                "request",
                metadata={"request_id": request_id, "revision": str(raw.mod_revision)},
            )
        return Prior(record, raw.mod_revision)

    def remember(
        self, key: bytes, revision: int, digest: bytes, applied: bool, answer: bytes
    ) -> None:
        """Add the answer to the record written at revision (in the background)."""
        record = records_pb2.IdempotencyRecord(fingerprint=digest, applied=applied, answer=answer)
        txn = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
                )
            ],
            success=[
                rpc.RequestOp(
                    request_put=rpc.PutRequest(
                        key=key, value=record.SerializeToString(), ignore_lease=True
                    )
                )
            ],
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
                await self._committer.commit(
                    txn, [key], len(key) + len(answer) + 64, retry=True, weight=1
                )
            except AccordError as exc:  # the retry will rebuild the answer from history
                _log.info("could not store an idempotent answer", error=exc.message)

        task = asyncio.create_task(store())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Let answers being stored finish (on shutdown)."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*self._tasks, return_exceptions=True), REMEMBER_TIMEOUT_SECONDS
                )
