"""Refusals on authorization grounds, written to the audit log without letting a caller
fill etcd or slow the replica by being refused.

The interceptor hands every UNAUTHENTICATED or PERMISSION_DENIED answer to note(), which
only appends to a bounded queue (no await, no etcd call on the refused call's path). A
background task writes what is queued in one etcd transaction per batch, each entry on
the retention lease under {root}/audit/, outside every namespace's keys. Each replica
logs at most RATE entries a second (bursts of BURST); refusals beyond that are counted
and logged as one summary entry ("n refusals not logged one by one"), so an attacker
who is refused a million times costs a handful of small writes a second.

Error handling: a batch etcd refuses is dropped with a warning in the replica's log
(which has every refusal anyway); it never reaches a caller. On shutdown, what is
queued is written if etcd answers within the drain time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from accord.coordinator import logs
from accord.coordinator.substrate import audit, calls
from accord.coordinator.substrate.errors import AccordError, clip
from accord.coordinator.substrate.idempotency import Writes
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.txn import Txn, txn
from accord.v1 import auth_pb2

_log = logs.get("accord.audit")

RATE = 20.0  # entries a second, per replica
BURST = 100
BATCH = 64  # entries per etcd transaction (etcd allows 128 ops)
MAX_QUEUED = 1000  # while etcd cannot take them, later refusals are only counted
REFUSED = "Refused"


class RefusalLog:
    def __init__(self, writes: Writes, keys: Keyspace, *, rate: float = RATE, burst: int = BURST):
        self._writes = writes
        self._keys = keys
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._filled_at = time.monotonic()
        self._queue: deque[auth_pb2.AuditEntry] = deque()
        self._suppressed = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # entries written, for the replica's shutdown log

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self, timeout: float = 2.0) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._queue or self._suppressed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(), timeout)

    def note(self, call: calls.Call, method: str, error: AccordError) -> None:
        """Queue an entry for a refused call, or count it when over the rate."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._filled_at) * self._rate)
        self._filled_at = now
        if self._tokens < 1 or len(self._queue) >= MAX_QUEUED:
            self._suppressed += 1
            self._wake.set()  # its count is written with the next batch, even if none follows
            return
        self._tokens -= 1
        self._queue.append(refusal(call, method, error))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost entry must never hurt the replica
                _log.warning("refusals not written to the audit log", error=str(exc))
            await asyncio.sleep(min(1.0 / self._rate, 1.0))  # batches, not a write each

    async def _flush(self) -> None:
        while self._queue or self._suppressed:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            if self._suppressed and len(batch) < BATCH:
                batch.append(_summary(self._suppressed))
                self._suppressed = 0

            def build(lease: int, entries: list[auth_pb2.AuditEntry] = batch) -> Txn:
                return txn(then=[audit.write(self._keys, e, lease) for e in entries])

            await self._writes.commit(build, retained=True, batched=False)
            self.written += len(batch)


def refusal(call: calls.Call, method: str, error: AccordError) -> auth_pb2.AuditEntry:
    """The entry for one refused call: who it claimed to be, from where, what it asked and
    why it was refused (never a token's secret: errors do not carry one)."""
    token = error.metadata.get("token_id", "") or call.token_id
    made = auth_pb2.AuditEntry(
        principal=call.principal,
        agent_id=call.agent_id,
        namespace=call.namespace,
        peer=call.peer,
        action=REFUSED,
        target=method,
        detail=clip(f"{error.reason}{f' (token {token})' if token else ''}: {error.message}"),
        trace_id=call.trace_id,
    )
    made.at.FromNanoseconds(time.time_ns())
    return made


def _summary(count: int) -> auth_pb2.AuditEntry:
    made = auth_pb2.AuditEntry(
        action=REFUSED,
        target="*",
        detail=f"{count} refusals not logged one by one (over {RATE:g} a second on this "
        "replica; each is in the replica's log)",
    )
    made.at.FromNanoseconds(time.time_ns())
    return made
