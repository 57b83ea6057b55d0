"""A session's subscribers: one queue per stream, fed by the session's etcd watch.

Cost: offering an event to a subscriber is O(1) amortized, whatever the number of
presence clients, so a presence change costs O(subscribers) and a new subscriber's
initial presence O(presences): fan-out is linear. A queue never holds more than about
twice MAX_PENDING_EVENTS or twice the session's presence clients, whichever is larger.

A merged message holds at most sizes.MAX_MERGED_BYTES of queued updates (a merge is no
larger than its parts), so every message fits a standard client. Subscribers of one
session that fell behind by the same updates (the usual case: a burst) share one merge of
them (Merges) instead of each merging them again, and an event's kind is read once for
all its subscribers.

Error handling: a subscriber ended with an error raises it from events() once its
queue is drained; a merge of queued updates that pycrdt refuses keeps them unmerged.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from functools import partial

from pycrdt import merge_updates

from accord.coordinator.observability import accord_metrics
from accord.coordinator.sessions.ops import LibraryFailure, guarded
from accord.coordinator.sessions.sizes import MAX_MERGED_BYTES
from accord.coordinator.substrate.errors import AccordError
from accord.v1 import sessions_pb2

# A subscriber further behind than this gets its pending updates merged into one.
MAX_PENDING_EVENTS = 256

Event = sessions_pb2.SessionsSubscribeResponse
UPDATE = "update"
MERGES_KEPT = 16


class Merges:
    """Merged runs of updates, shared by a session's subscribers: subscribers that fell
    behind by the same broadcast events ask for the same run (the same first and last
    event objects and length: every subscriber is offered the same objects in the same
    order), so it is merged once."""

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[int, int, int], tuple[Event, Event, Event | None]] = (
            OrderedDict()
        )

    def merge(self, run: list[Event]) -> Event | None:
        """The run as one event; None if pycrdt refuses to merge it."""
        first, last = run[0], run[-1]
        key = (id(first), id(last), len(run))
        kept = self._kept.get(key)
        if kept is not None and kept[0] is first and kept[1] is last:
            return kept[2]
        try:
            merged: Event | None = Event(
                revision=last.revision,
                update=guarded(lambda: merge_updates(*(e.update for e in run))),
            )
        except LibraryFailure:
            merged = None
        self._kept[key] = (first, last, merged)
        while len(self._kept) > MERGES_KEPT:
            self._kept.popitem(last=False)
        return merged


class Subscriber:
    """A stream's queue. It never blocks the session: a slow reader's pending updates
    are merged into one (a CRDT update subsumes its parts), never dropped.

    Each queued event keeps when it arrived at this replica (0.0: not measured, such as
    the state a new subscriber starts from); a message carrying updates is measured from
    the oldest of them (accord_session_update_delivery_seconds)."""

    def __init__(self, presence: bool, merges: Merges | None = None) -> None:
        self.presence = presence
        self._events: deque[tuple[str | None, Event, float]] = deque()  # (kind, event, arrived)
        self._limit = MAX_PENDING_EVENTS
        self._merges = merges or Merges()
        self._waiter: asyncio.Future[None] | None = None  # the reader, asleep
        self._ended: AccordError | None = None
        self._closed = False

    def offer(self, event: Event, kind: str | None = None, arrived: float = 0.0) -> None:
        """kind: event.WhichOneof("event"), when the caller read it already; arrived:
        accord_metrics.update_arrival() when the event's update reached this replica."""
        if self._closed:
            return
        if kind is None:
            kind = event.WhichOneof("event")
        if kind != UPDATE and not self.presence:
            return
        self._events.append((kind, event, arrived))
        if len(self._events) > self._limit:
            self._coalesce()
            # What is left is one event per presence client (and the merged updates): with
            # more clients than the limit, the next coalescing waits until the queue has
            # doubled, so each offer costs O(1) amortized, not O(clients).
            self._limit = max(MAX_PENDING_EVENTS, 2 * len(self._events))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _coalesce(self) -> None:
        updates = [e.update for kind, e, _ in self._events if kind == UPDATE]
        arrived = _oldest(a for kind, _, a in self._events if kind == UPDATE)
        latest: dict[int, tuple[str | None, Event, float]] = {}
        for kind, e, a in self._events:
            if kind == "presence":
                latest[e.presence.client_id] = (kind, e, a)
            elif kind == "presence_gone":
                latest[e.presence_gone.client_id] = (kind, e, a)
        revision = self._events[-1][1].revision
        self._events.clear()
        for run in _runs(updates):
            try:
                merged = [guarded(partial(merge_updates, *run))] if len(run) > 1 else run
            except LibraryFailure:  # stored updates all decoded once; keep them as they are
                merged = run
            self._events.extend(
                (UPDATE, Event(revision=revision, update=u), arrived) for u in merged
            )
        self._events.extend(latest.values())

    def end(self, error: AccordError | None) -> None:
        self._ended = error
        self._closed = True
        self._wake()

    def _next(self) -> tuple[Event, float]:
        """The next event, and when its oldest update arrived (0.0: none measured);
        updates queued back to back go out as one merged message (a stream message costs
        far more than merging small updates)."""
        kind, event, arrived = self._events.popleft()
        if kind != UPDATE:
            return event, 0.0
        run = [event]
        arrivals = [arrived]
        size = len(event.update)
        while (
            self._events
            and self._events[0][0] == UPDATE
            and size + len(self._events[0][1].update) <= MAX_MERGED_BYTES
        ):
            _, later, later_arrived = self._events.popleft()
            size += len(later.update)
            run.append(later)
            arrivals.append(later_arrived)
        if len(run) == 1:
            return event, arrived
        merged = self._merges.merge(run)
        if merged is None:  # stored updates all decoded once; send them one by one
            for later, later_arrived in zip(reversed(run[1:]), reversed(arrivals[1:]), strict=True):
                self._events.appendleft((UPDATE, later, later_arrived))
            return event, arrived
        return merged, _oldest(arrivals)

    async def events(self) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        while True:
            while self._events:
                event, arrived = self._next()
                accord_metrics.update_delivered(arrived)
                yield event
            self._limit = MAX_PENDING_EVENTS
            if self._closed:
                if self._ended is not None:
                    raise self._ended
                return
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def _oldest(arrivals: Iterable[float]) -> float:
    """The earliest measured arrival (0.0: none was measured)."""
    return min((a for a in arrivals if a), default=0.0)


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
