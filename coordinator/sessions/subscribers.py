"""A session's subscribers: one queue per stream, fed by the session's etcd watch.

Cost: offering an event to a subscriber is O(1) amortized, whatever the number of
presence clients, so a presence change costs O(subscribers) and a new subscriber's
initial presence O(presences): fan-out is linear. A queue never holds more than about
twice MAX_PENDING_EVENTS or twice the session's presence clients, whichever is larger.

A merged message holds at most sizes.MAX_MERGED_BYTES of queued updates (a merge is no
larger than its parts), so every message fits a standard client.

Error handling: a subscriber ended with an error raises it from events() once its
queue is drained; a merge of queued updates that pycrdt refuses keeps them unmerged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from functools import partial

from pycrdt import merge_updates

from accord.coordinator.sessions.ops import LibraryFailure, guarded
from accord.coordinator.sessions.sizes import MAX_MERGED_BYTES
from accord.coordinator.substrate.errors import AccordError
from accord.v1 import sessions_pb2

# A subscriber further behind than this gets its pending updates merged into one.
MAX_PENDING_EVENTS = 256

Event = sessions_pb2.SessionsSubscribeResponse


class Subscriber:
    """A stream's queue. It never blocks the session: a slow reader's pending updates
    are merged into one (a CRDT update subsumes its parts), never dropped."""

    def __init__(self, presence: bool) -> None:
        self.presence = presence
        self._events: deque[Event] = deque()
        self._limit = MAX_PENDING_EVENTS
        self._wake = asyncio.Event()
        self._ended: AccordError | None = None
        self._closed = False

    def offer(self, event: Event) -> None:
        if self._closed:
            return
        if event.WhichOneof("event") != "update" and not self.presence:
            return
        self._events.append(event)
        if len(self._events) > self._limit:
            self._coalesce()
            # What is left is one event per presence client (and the merged updates): with
            # more clients than the limit, the next coalescing waits until the queue has
            # doubled, so each offer costs O(1) amortized, not O(clients).
            self._limit = max(MAX_PENDING_EVENTS, 2 * len(self._events))
        self._wake.set()

    def _coalesce(self) -> None:
        updates = [e.update for e in self._events if e.WhichOneof("event") == "update"]
        latest: dict[int, Event] = {}
        for e in self._events:
            kind = e.WhichOneof("event")
            if kind == "presence":
                latest[e.presence.client_id] = e
            elif kind == "presence_gone":
                latest[e.presence_gone.client_id] = e
        revision = self._events[-1].revision
        self._events.clear()
        for run in _runs(updates):
            try:
                merged = [guarded(partial(merge_updates, *run))] if len(run) > 1 else run
            except LibraryFailure:  # stored updates all decoded once; keep them as they are
                merged = run
            self._events.extend(Event(revision=revision, update=u) for u in merged)
        self._events.extend(latest.values())

    def end(self, error: AccordError | None) -> None:
        self._ended = error
        self._closed = True
        self._wake.set()

    def _next(self) -> Event:
        """The next event; updates queued back to back go out as one merged message (a
        stream message costs far more than merging small updates)."""
        event = self._events.popleft()
        if event.WhichOneof("event") != "update":
            return event
        run = [event.update]
        revision = event.revision
        size = len(event.update)
        while (
            self._events
            and self._events[0].WhichOneof("event") == "update"
            and size + len(self._events[0].update) <= MAX_MERGED_BYTES
        ):
            later = self._events.popleft()
            size += len(later.update)
            run.append(later.update)
            revision = later.revision
        if len(run) == 1:
            return event
        try:
            merged = guarded(lambda: merge_updates(*run))
        except LibraryFailure:  # stored updates all decoded once; send them one by one
            for update in reversed(run[1:]):
                self._events.appendleft(Event(revision=revision, update=update))
            return event
        return Event(revision=revision, update=merged)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            while self._events:
                yield self._next()
            self._limit = MAX_PENDING_EVENTS
            if self._closed:
                if self._ended is not None:
                    raise self._ended
                return
            self._wake.clear()
            await self._wake.wait()


def _runs(updates: list[bytes]) -> list[list[bytes]]:
    """updates in order, cut into runs of at most MAX_MERGED_BYTES (or one update)."""
    runs: list[list[bytes]] = []
    size = MAX_MERGED_BYTES + 1
    for update in updates:
        if size + len(update) > MAX_MERGED_BYTES:
            runs.append([])
            size = 0
        runs[-1].append(update)
        size += len(update)
    return runs
