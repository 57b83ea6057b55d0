"""One watch of a semaphore queue's deletions per replica, shared by its waiters.

A semaphore waiter counts the deletions of entries ahead of it (looks.py). Given a watch
each, a release sends every waiter its own copy of the event (with prev_kv, which etcd
reads per watcher): n events per release. Here the waiters of one queue on a replica
share one watcher on the replica's shared stream, so etcd sends each deletion once and
the replica hands it to each waiter in process.

A waiter joins at the revision its count has reached. A new feed starts its watch right
after it; a running one replays the deletions it still holds (the last BUFFER events)
after that revision, or refuses the join when it no longer holds them all (the waiter
then watches for itself, as without a feed). A feed ends when its last waiter leaves,
or when its watch may have missed events (compaction, a broken stream): then each of its
waiters is told it lost track, and counts again.

Error handling: nothing here raises; a feed that ends tells its waiters (on_lost).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from accord.coordinator.substrate.txn import watch
from accord.coordinator.substrate.watch_hub import WatchHub

BUFFER = 1024  # deletions a feed keeps for waiters that join behind it

OnEvents = Callable[[Sequence[Any]], None]


class _Listener:
    __slots__ = ("on_events", "on_lost")

    def __init__(self, on_events: OnEvents, on_lost: Callable[[], None]) -> None:
        self.on_events, self.on_lost = on_events, on_lost


class _Feed:
    def __init__(self, since: int) -> None:
        self.listeners: set[_Listener] = set()
        self.events: deque[Any] = deque()
        self.complete_after = since  # every deletion after this revision is in events
        self.ended = False
        self.task: asyncio.Task[None] | None = None

    def dispatch(self, events: Sequence[Any]) -> bool:
        self.events.extend(events)
        while len(self.events) > BUFFER:
            self.complete_after = self.events.popleft().kv.mod_revision
        for listener in list(self.listeners):
            listener.on_events(events)
        return False  # a feed follows its queue until it is stopped


class QueueFeeds:
    def __init__(self, hub: WatchHub) -> None:
        self._hub = hub
        self._feeds: dict[bytes, _Feed] = {}

    def join(
        self, queue: bytes, since: int, on_events: OnEvents, on_lost: Callable[[], None]
    ) -> Callable[[], None] | None:
        """Hand on_events the queue's deletions after revision since, in order, until the
        returned leave() or on_lost(); None when this replica cannot replay them all."""
        feed = self._feeds.get(queue)
        if feed is None or feed.ended:
            feed = _Feed(since)
            self._feeds[queue] = feed
            feed.task = asyncio.create_task(self._follow(queue, feed, since + 1))
        elif since < feed.complete_after:
            return None
        else:
            missed = [e for e in feed.events if e.kv.mod_revision > since]
            if missed:
                on_events(missed)
        listener = _Listener(on_events, on_lost)
        feed.listeners.add(listener)

        def leave() -> None:
            feed.listeners.discard(listener)
            if not feed.listeners:
                self._stop(queue, feed)

        return leave

    async def _follow(self, queue: bytes, feed: _Feed, start: int) -> None:
        deletions = watch(queue, prefix=True, deletions_only=True, prev_kv=True)
        deletions.start_revision = start
        try:
            await self._hub.first_change([deletions], None, feed.dispatch)
        finally:  # it may have missed events: its waiters count again
            feed.ended = True
            if self._feeds.get(queue) is feed:
                del self._feeds[queue]
            for listener in list(feed.listeners):
                listener.on_lost()
            feed.listeners.clear()

    def _stop(self, queue: bytes, feed: _Feed) -> None:
        feed.ended = True
        if self._feeds.get(queue) is feed:
            del self._feeds[queue]
        if feed.task is not None and not feed.task.done():
            feed.task.cancel()
