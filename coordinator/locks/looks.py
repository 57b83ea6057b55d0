"""What a waiting entry needs to know of its queue, read without reading the queue.

A waiter needs the queue's head (to refuse a request in another mode than the queue's),
whether it holds, and the one entry whose deletion may change that (its blocker). Each
is a bounded etcd range: the head is the first entry by create revision, an exclusive
waiter's blocker the entry just ahead of it, a semaphore waiter holds while fewer than
`permits` entries are ahead. A shared waiter's blocker is the last exclusive entry ahead:
found by reading the entries ahead, newest first, a page at a time; entries are only
ever added behind it, so after its blocker leaves it goes on from there, and over its
whole wait it reads each entry ahead at most once. So the coordinator handles O(1)
entries per look (O(permits) keys for a semaphore), whatever the queue's length; etcd
still visits the queue's keys to sort them (in etcd, without sending them).

A semaphore waiter has no single blocker: any entry ahead leaving brings it closer. It
counts instead. Entries are only ever added behind it, so the number ahead only falls,
one per deletion of an entry created before its own. It learns that number when it joins
(a count in the enqueue transaction, before its put), then follows the queue's deletions
(with prev_kv, so each deletion says when its entry was created) from the revision it
has counted to, and looks at etcd again only when the count says it may hold or its own
entry went. It follows them on the queue's feed (queue_feeds.py: one watch per queue on
the replica, shared by its waiters), staying on it while it looks, or on a watch of its
own from the revision after the last event counted when no feed can replay from there.
So a release costs each waiter it does not concern no etcd read and no etcd event of
its own (it was a look each: O(waiters) reads per release, O(n^2) to drain). When
events may have been lost (compaction, a stream reset, a deletion without prev_kv) or a
look disagrees with the count, it counts again: the keys ahead of it (keys only,
O(position), rare).

Error handling: etcd failures propagate as AccordErrors from substrate.etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from accord.coordinator.locks.queue import EXCLUSIVE, Entry, entry_of
from accord.coordinator.locks.queue_feeds import QueueFeeds
from accord.coordinator.substrate import Substrate
from accord.coordinator.substrate.txn import (
    KeyValue,
    Op,
    Response,
    WatchCreate,
    count,
    get,
    get_prefix,
    read,
    txn,
    watch,
)

PAGE = 64  # entries read at a time when a shared waiter looks for an exclusive one ahead


def head_op(queue: bytes, limit: int = 1) -> Op:
    """The first `limit` entries of the queue, oldest first."""
    op = get_prefix(queue, by_creation=True)
    op.request_range.limit = limit
    return op


def ahead_op(queue: bytes, below: int, limit: int, *, newest_first: bool = True) -> Op:
    """Up to `limit` entries created before revision `below` (0: any), newest first."""
    op = get_prefix(queue, by_creation=True)
    request = op.request_range
    request.limit = limit
    if below:
        request.max_create_revision = below - 1
    if newest_first:
        request.sort_order = request.DESCEND
    return op


def ahead_ops(queue: bytes, mode: int, permits: int) -> list[Op]:
    """The reads of what is ahead of a new entry, for the transaction that enqueues it
    (run before its put, so they see only the entries ahead)."""
    if permits:  # the first `permits` entries, and how many there are in all
        return [head_op(queue, permits), count(queue, prefix=True)]
    return [ahead_op(queue, 0, 1 if mode == EXCLUSIVE else PAGE)]


# What the enqueue transaction read: (its revision, the head, the answers to ahead_ops).
FirstLook = tuple[int, list["Entry"], list[Response]]


@dataclass(frozen=True, slots=True)
class Look:
    """The queue as one waiting entry sees it, at one revision."""

    revision: int
    entry: Entry | None  # ours as it is now; None once it is gone
    head: Entry | None
    holds: bool
    # The entry whose deletion may let ours hold (None for a semaphore: any may).
    blocker: Entry | None


@dataclass(frozen=True, slots=True)
class Wait:
    """What a waiter watches until it looks again: from `start`, and with `wants` (a
    semaphore's count) deciding which events end the wait."""

    creates: list[WatchCreate]
    start: int
    wants: Callable[[Sequence[Any]], bool] | None


class Looker:
    """Looks at a queue for one waiting entry; remembers how far a shared wait's search
    for an exclusive entry ahead has gone."""

    def __init__(
        self, substrate: Substrate, namespace: str, entry: Entry, feeds: QueueFeeds | None = None
    ) -> None:
        self._s = substrate
        self._feeds = feeds
        self._ns = namespace
        self._entry = entry
        self._queue = entry.queue
        # A shared wait: nothing between this revision and our token is exclusive.
        self._scan_below = entry.token
        # A semaphore wait: how many entries are ahead (None: to be counted), as of the
        # revision its count has followed the queue's deletions to.
        self._ahead: int | None = None
        self._counted_to = 0
        # Following its queue's shared feed (queue_feeds.py): how to leave it, and what
        # ends a wait on it.
        self._leave: Callable[[], None] | None = None
        self._gone = False
        self._woken = asyncio.Event()

    def _entries(self, response: Response) -> list[Entry]:
        return [entry_of(self._s.keys, self._ns, kv) for kv in response.response_range.kvs]

    async def first(self, revision: int, head: list[Entry], responses: list[Response]) -> Look:
        """The look from the enqueue transaction's reads (ahead_ops)."""
        if self._entry.record.permits:  # everything in the queue before our put is ahead
            self._ahead, self._counted_to = responses[1].response_range.count, revision
        return await self._decide(revision, self._entry, head[0] if head else None, responses)

    def look_ops(self) -> list[Op]:
        """The reads of a look, for a transaction of their own or a claim's failure branch."""
        return [get(self._entry.key), head_op(self._queue), *self._wait_ops()]

    async def parse(self, revision: int, responses: list[Response]) -> Look:
        """The look from the answers to look_ops, read at revision."""
        own = _incarnation(responses[0].response_range.kvs, self._entry.token)
        head = self._entries(responses[1])
        mine = entry_of(self._s.keys, self._ns, own) if own is not None else None
        return await self._decide(revision, mine, head[0] if head else None, responses[2:])

    async def look(self) -> Look:
        """The queue now."""
        response = await self._s.etcd.txn(txn(when=[], then=self.look_ops()), retry=True)
        return await self.parse(response.header.revision, list(response.responses))

    def _wait_ops(self) -> list[Op]:
        if self._entry.record.permits:  # do fewer than permits come before ours?
            return [head_op(self._queue, self._entry.record.permits)]
        limit = 1 if self._entry.mode == EXCLUSIVE else PAGE
        return [ahead_op(self._queue, self._scan_below, limit)]

    async def _decide(
        self, revision: int, mine: Entry | None, head: Entry | None, ahead: list[Response]
    ) -> Look:
        if mine is None:
            return Look(revision, None, head, False, None)
        if mine.record.granted:
            return Look(revision, mine, head, True, None)
        page = self._entries(ahead[0])
        if mine.record.permits:
            return await self._semaphore(revision, mine, head, page)
        if mine.mode == EXCLUSIVE:
            return Look(revision, mine, head, not page, page[0] if page else None)
        return await self._shared(revision, mine, head, page)

    async def _semaphore(
        self, revision: int, mine: Entry, head: Entry | None, page: list[Entry]
    ) -> Look:
        """Holds when fewer than permits entries are ahead; else makes sure of its count."""
        permits = mine.record.permits
        if len([e for e in page if e.token < mine.token]) < permits:
            return Look(revision, mine, head, True, None)
        if self._ahead is None or self._ahead < permits:  # unknown, or wrong: count again
            self.close()  # (a feed must not count on while this count is read)
            request = read(self._queue, prefix=True, keys_only=True, revision=revision)
            request.max_create_revision = mine.token - 1
            response = await self._s.etcd.range(request)
            self._ahead, self._counted_to = len(response.kvs), revision
        return Look(revision, mine, head, False, None)

    def wait(self, look: Look) -> Wait:
        """What to watch after a look that does not hold."""
        assert look.entry is not None
        if not self._entry.record.permits:  # our entry's deletion and our blocker's
            assert look.blocker is not None
            own = watch(look.entry.key, deletions_only=True)
            blocker = watch(look.blocker.key, deletions_only=True)
            return Wait([own, blocker], look.revision + 1, None)
        # The queue's deletions (ours among them) from where the count stands.
        deletions = watch(self._queue, prefix=True, deletions_only=True, prev_kv=True)
        return Wait([deletions], self._counted_to + 1, self._count)

    def lost_track(self) -> None:
        """The last wait may have missed events: count again at the next look."""
        self._ahead = None

    async def follow(self, look: Look, remaining: float | None) -> None:
        """Wait after a look that does not hold, until what it watches changes (or may
        have) or time's up; the watchers ride the replica's shared etcd watch stream. A
        semaphore waits on its queue's shared feed (joined at the revision its count has
        reached) until the count says it may hold, its entry went, or the feed lost track;
        without a feed that can replay from there, on a watch of its own."""
        permits = self._entry.record.permits
        if permits and self._leave is None and self._feeds is not None and self._ahead is not None:
            self._leave = self._feeds.join(
                self._queue, self._counted_to, self._feed_events, self._feed_lost
            )
        if self._leave is None:
            wait = self.wait(look)
            for create in wait.creates:
                create.start_revision = wait.start
            complete = await self._s.etcd.watch_hub.first_change(
                wait.creates, remaining, wait.wants
            )
            if not complete:
                self.lost_track()
            return
        self._woken.clear()
        if self._gone or self._ahead is None or self._ahead < permits:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), remaining)

    def close(self) -> None:
        """Leave the queue's feed (when the wait ends, or to count again)."""
        if self._leave is not None:
            leave, self._leave = self._leave, None
            leave()

    def _feed_events(self, events: Sequence[Any]) -> None:
        if self._count(events):
            self._woken.set()

    def _feed_lost(self) -> None:
        self._leave = None
        self.lost_track()
        self._woken.set()

    def _count(self, events: Sequence[Any]) -> bool:
        """Counts deletions of entries ahead; True when ours may hold or is gone."""
        token = self._entry.token
        gone = False
        floor = self._counted_to
        for event in events:
            if event.kv.mod_revision <= floor:
                continue  # counted already (a feed replaying what it holds)
            self._counted_to = max(self._counted_to, event.kv.mod_revision)
            created = event.prev_kv.create_revision if event.HasField("prev_kv") else 0
            if event.kv.key == self._entry.key or not created:
                gone = True  # ours went, or a deletion we cannot place: look
                self._gone = self._gone or event.kv.key == self._entry.key
                if not created:
                    self._ahead = None
            elif created < token and self._ahead is not None:
                self._ahead -= 1
        return gone or self._ahead is None or self._ahead < self._entry.record.permits

    async def _shared(
        self, revision: int, mine: Entry, head: Entry | None, page: list[Entry]
    ) -> Look:
        """Holds when no exclusive entry is ahead; else waits for the last one."""
        while True:
            blocker = next((e for e in page if e.mode == EXCLUSIVE), None)
            if blocker is not None:
                self._scan_below = blocker.token + 1  # only shared entries between
                return Look(revision, mine, head, False, blocker)
            if len(page) < PAGE:
                return Look(revision, mine, head, True, None)
            self._scan_below = page[-1].token
            request = read(self._queue, prefix=True, by_creation=True, revision=revision)
            request.sort_order = request.DESCEND
            request.max_create_revision = self._scan_below - 1
            request.limit = PAGE
            response = await self._s.etcd.range(request)
            page = [entry_of(self._s.keys, self._ns, kv) for kv in response.kvs]


def _incarnation(kvs: list[KeyValue], token: int) -> KeyValue | None:
    return kvs[0] if kvs and kvs[0].create_revision == token else None
