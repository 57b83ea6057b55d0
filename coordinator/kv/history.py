"""Watching keys and walking their history, for the KV primitive.

A watch resumes from a revision: every batch says the revision to resume from, so a
client that moves to another replica continues without a gap. History walks back one
change at a time through etcd's MVCC history; deletions are told by the tombstone the
delete wrote (who and when). Both end where etcd's compaction has erased history.

Error handling: a start revision etcd has compacted is COMPACTED (with the oldest
revision left); a before_revision in the future is INVALID_ARGUMENT; a history walk that
reaches compacted revisions stops there and says so (truncated_by_compaction).

Pages: a history page stops at `limit` entries or before it would exceed
pages.MAX_PAGE_BYTES (large values), whichever comes first; next_before_revision resumes.
A watch response holds at most that many bytes of events too: one etcd response (which
catching up fills with up to 1,000 revisions) may become several.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from accord.coordinator.kv import breaks
from accord.coordinator.kv.model import History, WatchBatch, to_event, to_kv
from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import Compacted, invalid
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.pages import PageBudget
from accord.coordinator.substrate.txn import KeyValue, read
from accord.coordinator.substrate.txn import watch as watch_from
from accord.v1 import kv_pb2, records_pb2

DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 500


async def watch(
    s: Substrate, key: str, *, prefix: bool, start_revision: int, prev_kv: bool
) -> AsyncIterator[WatchBatch]:
    ns = calls.current.get().namespace
    data_prefix = s.keys.kv_prefix(ns)
    create = watch_from(
        s.keys.kv(ns, key), prefix=prefix, start_revision=start_revision, prev_kv=prev_kv
    )
    drop_one = breaks.DROP_ONE and start_revision > 0
    async for response in s.etcd.watch(create):
        if response.created:
            resume = start_revision or response.header.revision + 1
            yield WatchBatch(response.header.revision, [], resume)
            continue
        if not response.events:
            continue  # a progress notice: not proof that history was delivered (etcd 3.4)
        events = [to_event(data_prefix, event) for event in response.events]
        if drop_one:
            events, drop_one = events[1:], False
            if not events:
                continue
        for batch in _fitting(response.header.revision, events):
            yield batch


def _fitting(revision: int, events: list[kv_pb2.WatchEvent]) -> list[WatchBatch]:
    """events (one etcd response: up to 1,000 revisions when catching up) as batches that
    each fit a standard client. A batch ending between revisions resumes at the next; one
    that ends inside a revision (its events alone exceed the budget: a Txn of large values
    with prev_kv) resumes at that revision, so resuming there repeats its earlier events."""
    batches: list[WatchBatch] = []
    chunk: list[kv_pb2.WatchEvent] = []
    budget = PageBudget()
    for event in events:
        if not budget.take(event):
            last, next_at = chunk[-1].kv.mod_revision, event.kv.mod_revision
            batches.append(WatchBatch(revision, chunk, last if next_at == last else last + 1))
            chunk, budget = [], PageBudget()
            budget.take(event)
        chunk.append(event)
    batches.append(WatchBatch(revision, chunk, chunk[-1].kv.mod_revision + 1))
    return batches


async def walk(s: Substrate, key: str, *, limit: int, before_revision: int) -> History:
    ns = calls.current.get().namespace
    data_key, tomb_key = s.keys.kv(ns, key), s.keys.tomb(ns, key)
    limit = limit or DEFAULT_HISTORY_LIMIT
    head = await s.etcd.range(read(data_key, count_only=True))
    now = head.header.revision
    if before_revision > now + 1:
        raise invalid(
            "before_revision",
            f"revision {before_revision} is in the future (the current revision is {now})",
        )
    cursor = before_revision - 1 if before_revision else now
    entries: list[kv_pb2.HistoryEntry] = []
    budget = PageBudget()  # a deletion entry is tiny: only puts can fill a page
    truncated = False
    # Walk back one change at a time: the value at `cursor`, then just before it; at a
    # gap, the tombstone says when and by whom the previous incarnation was deleted.
    while cursor >= 1 and len(entries) < limit:
        try:
            raw = await raw_at(s.etcd, data_key, cursor)
            if raw is not None:
                kv = to_kv(s.keys.kv_prefix(ns), raw)
                entry = kv_pb2.HistoryEntry(
                    kind=kv_pb2.HistoryEntry.KIND_PUT,
                    revision=raw.mod_revision,
                    kv=kv,
                    changed_by=kv.written_by,
                )
                if not budget.take(entry):
                    cursor = raw.mod_revision  # the next page starts with this entry
                    break
                entries.append(entry)
                cursor = raw.mod_revision - 1
                continue
            tomb = await raw_at(s.etcd, tomb_key, cursor)
            if tomb is None:
                cursor = 0
                break
            deleted_at = tomb.mod_revision
            if await raw_at(s.etcd, data_key, deleted_at - 1) is not None:
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


async def raw_at(etcd: Etcd, key: bytes, revision: int) -> KeyValue | None:
    """key as it was at revision (None: absent then); COMPACTED if etcd forgot."""
    response = await etcd.range(read(key, revision=revision))
    return response.kvs[0] if response.kvs else None
