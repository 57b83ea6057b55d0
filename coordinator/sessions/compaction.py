"""Compaction: a session's log folded into one snapshot, so etcd holds it at its smallest.

Safe because the document is exactly "the snapshot plus every logged update up to
applied_revision" (doc.py): a snapshot taken from it covers precisely the log entries
created up to that revision, and only those are deleted. Chunks go first, then one
transaction writes the last chunk and the record, guarded by the record being the one
read; of two replicas compacting at once, one wins and the other deletes its chunks,
unless the record now names the very snapshot it wrote (the same state at the same
revision: the same chunk keys, the winner's).
The updates' trace contexts (keys.trace) go too, all of them: a watcher gets each in the
watch response of its update, before any deletion.

Error handling: a failed compaction is logged and retried on a later trigger; the
session stays correct, only larger.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from accord.coordinator import logs
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import AccordError
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.txn import delete, exists, mod_is, put, read, txn
from accord.v1 import records_pb2

if TYPE_CHECKING:
    from accord.coordinator.sessions.doc import SessionDoc

_log = logs.get("accord.sessions")
SNAPSHOT_CHUNK_BYTES = 512 * 1024
DELETE_BATCH = 100


async def compact(doc: SessionDoc) -> bool:
    """Replace the log up to applied_revision by one snapshot. Returns False when
    another replica's compaction won the race (that one is just as good)."""
    calls.current.set(
        calls.Call(namespace=doc.namespace, agent_id="", trace_id="compact", deadline=None)
    )
    revision = doc.applied_revision  # the document is exactly the log up to here
    state = doc.doc.get_update()
    covered = [
        k for k, e in doc.log.items() if e.create_revision <= revision and e.pending is None
    ]
    digest = hashlib.sha256(state).digest()
    base = doc.keys.snapshot(revision) + digest[:8].hex().encode() + b"\x00"
    chunks = [
        state[i : i + SNAPSHOT_CHUNK_BYTES] for i in range(0, len(state), SNAPSHOT_CHUNK_BYTES)
    ] or [b""]
    keys = [base + f"{i:04x}".encode() for i in range(len(chunks))]
    try:
        found = await doc.etcd.range(read(doc.meta_key))
        if not found.kvs or found.kvs[0].create_revision != doc.created_revision:
            return False
        meta = found.kvs[0]
        record = records_pb2.SessionRecord.FromString(meta.value)
        if record.snapshot_revision >= revision:
            return False
        alive = exists(doc.alive_key)  # the session was not deleted meanwhile
        for key, chunk in zip(keys[:-1], chunks[:-1], strict=True):
            await doc.etcd.txn(txn(when=[alive], then=[put(key, chunk)]), retry=True)
        record.snapshot_revision = revision
        record.snapshot_chunks = len(chunks)
        record.snapshot_bytes = len(state)
        record.snapshot_sha256 = digest
        won = await doc.etcd.txn(
            txn(
                when=[alive, mod_is(doc.meta_key, meta.mod_revision)],  # nobody else won
                then=[put(keys[-1], chunks[-1]), put(doc.meta_key, record.SerializeToString())],
            ),
            retry=False,
        )
        if not won.succeeded:
            if not await _names(doc, revision, digest):
                await delete_keys(doc.etcd, keys[:-1])
            return False
        doc.snapshot_revision = max(doc.snapshot_revision, revision)
        doc.snapshot_bytes = len(state)
        current = set(keys)
        stale = [k for k in doc.snapshot_keys if k not in current]
        await delete_keys(doc.etcd, covered + stale)
        if doc.traced:  # the updates' trace contexts: each watcher got one with its update
            doc.traced = False
            await doc.etcd.txn(txn(then=[delete(doc.keys.trace(""), prefix=True)]), retry=True)
        # Forget what we deleted now, not when the watch says so: until then the stale
        # chunks would look like garbage and start a needless second compaction.
        for key in stale:
            doc.snapshot_keys.pop(key, None)
        for key in covered:
            entry = doc.log.pop(key, None)
            if entry is not None:
                doc.log_bytes -= entry.size
        return True
    except AccordError as exc:
        _log.info("session compaction failed; will retry", session=doc.name, error=exc.message)
        return False


async def _names(doc: SessionDoc, revision: int, digest: bytes) -> bool:
    """Whether the session's record now names the snapshot of this revision and digest:
    two replicas compacting the same state at the same revision write the same chunk
    keys, and the loser must not delete the winner's chunks (a cold load then found the
    snapshot incomplete)."""
    found = await doc.etcd.range(read(doc.meta_key))
    if not found.kvs:
        return False
    record = records_pb2.SessionRecord.FromString(found.kvs[0].value)
    return record.snapshot_revision == revision and record.snapshot_sha256 == digest


async def delete_keys(etcd: Etcd, keys: list[bytes]) -> None:
    for i in range(0, len(keys), DELETE_BATCH):
        batch = keys[i : i + DELETE_BATCH]
        await etcd.txn(txn(then=[delete(k) for k in batch]), retry=True)
