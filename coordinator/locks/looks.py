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

Error handling: etcd failures propagate as AccordErrors from substrate.etcd.
"""

from __future__ import annotations

from dataclasses import dataclass

from accord.coordinator.locks.queue import EXCLUSIVE, Entry, entry_of
from accord.coordinator.substrate import Substrate
from accord.coordinator.substrate.txn import (
    KeyValue,
    Op,
    Response,
    WatchCreate,
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
    if permits:
        return [head_op(queue, permits)]
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
    # The entry whose deletion may let ours hold (None for a semaphore: any may, so its
    # waiter watches the queue's deletions).
    blocker: Entry | None

    def watches(self) -> list[WatchCreate]:
        """Watches of the deletions the waiter cares about: its own entry's, and its
        blocker's (for a semaphore, any in its queue)."""
        assert self.entry is not None
        key = self.entry.key
        own = watch(key, deletions_only=True)
        if self.blocker is None:
            queue = key[: key.rindex(b"\x00") + 1]
            return [own, watch(queue, prefix=True, deletions_only=True)]
        return [own, watch(self.blocker.key, deletions_only=True)]


class Looker:
    """Looks at a queue for one waiting entry; remembers how far a shared wait's search
    for an exclusive entry ahead has gone."""

    def __init__(self, substrate: Substrate, namespace: str, entry: Entry) -> None:
        self._s = substrate
        self._ns = namespace
        self._entry = entry
        self._queue = entry.key[: entry.key.rindex(b"\x00") + 1]
        # A shared wait: nothing between this revision and our token is exclusive.
        self._scan_below = entry.token

    def _entries(self, response: Response) -> list[Entry]:
        return [entry_of(self._s.keys, self._ns, kv) for kv in response.response_range.kvs]

    async def first(self, revision: int, head: list[Entry], responses: list[Response]) -> Look:
        """The look from the enqueue transaction's reads (ahead_ops)."""
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
            first = [e for e in page if e.token < mine.token]
            return Look(revision, mine, head, len(first) < mine.record.permits, None)
        if mine.mode == EXCLUSIVE:
            return Look(revision, mine, head, not page, page[0] if page else None)
        return await self._shared(revision, mine, head, page)

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
