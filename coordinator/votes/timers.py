"""Deadlines and retention for votes, enforced by every replica.

Each open vote has a close timer key, and each decided vote an expire timer key, under
{root}/vote-timers/ (named by due time, so a range read lists them in order). Every
replica reads them all, follows them with one etcd watch, and acts on each when due:
closing a vote (Decisions.close_due) or deleting it after its retention
(Decisions.expire_due). Replicas race harmlessly: the decision Txn lets exactly one
win, and deletions are idempotent. So a vote closes on time even when its proposer and
the proposer's replica are gone, as long as any replica runs.

Every open vote has a close timer until it is decided, so the close timers followed here
are the open votes of every namespace: accord_votes_open counts them as they come and go
(the same figure on every replica), at no cost beyond following them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from accord.coordinator import logs
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import Substrate, calls, clock
from accord.coordinator.substrate.errors import AccordError
from accord.coordinator.substrate.txn import read, watch
from accord.coordinator.votes.decisions import Decisions

_log = logs.get("accord.vote_timers")
ACT_TIMEOUT_SECONDS = 10.0
RETRY_SECONDS = 1.0
MAX_CONCURRENT = 16


class VoteTimers:
    def __init__(self, substrate: Substrate, votes: Decisions) -> None:
        self._etcd = substrate.etcd
        self._keys = substrate.keys
        self._votes = votes
        self._prefix = substrate.keys.vote_timers_prefix
        self._due: dict[bytes, float] = {}  # timer key -> when to act (clock.now())
        self._changed = asyncio.Event()
        self._acting: set[bytes] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._main: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._main = asyncio.create_task(self._run())

    async def close(self) -> None:
        for task in [self._main, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._main, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _track(self, key: bytes) -> None:
        """Fire at the time the key names; a key that names none is not a timer."""
        parsed = self._keys.parse_vote_timer(key)
        if parsed is None:
            _log.warning("ignoring a key that is not a vote timer", key=key[-64:].hex())
            return
        if parsed[1] == "close" and key not in self._due:
            accord_metrics.votes_open(parsed[2], 1)
        self._due[key] = parsed[0] / 1000

    def _untrack(self, key: bytes) -> None:
        if self._due.pop(key, None) is None:
            return
        parsed = self._keys.parse_vote_timer(key)  # tracked, so parsed
        if parsed is not None and parsed[1] == "close":
            accord_metrics.votes_open(parsed[2], -1)

    @property
    def pending(self) -> int:
        return len(self._due)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # timers must outlive any etcd trouble
                _log.info("vote timers lost their etcd watch; resyncing", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.1

    async def _follow(self) -> None:
        """Read every timer, then follow changes while firing those that come due."""
        found = await self._etcd.range(read(self._prefix, prefix=True))
        for key in list(self._due):
            self._untrack(key)
        for kv in found.kvs:
            self._track(kv.key)
        self._changed.set()
        firing = asyncio.create_task(self._fire())
        try:
            changes = watch(self._prefix, prefix=True, start_revision=found.header.revision + 1)
            async for response in self._etcd.watch(changes):
                for event in response.events:
                    if event.type == event.PUT:
                        self._track(event.kv.key)
                    else:
                        self._untrack(event.kv.key)
                self._changed.set()
        finally:
            firing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await firing

    async def _fire(self) -> None:
        while True:
            self._changed.clear()
            now = clock.now()
            ready = [k for k, due in self._due.items() if due <= now and k not in self._acting]
            for key in ready:
                self._acting.add(key)
                task = asyncio.create_task(self._act(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            waiting = [due for k, due in self._due.items() if k not in self._acting]
            timeout = max(0.0, min(waiting) - clock.now()) if waiting else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def _act(self, key: bytes) -> None:
        parsed = self._keys.parse_vote_timer(key)
        assert parsed is not None  # only parsed keys are tracked
        due_ms, kind, ns, vote_id = parsed
        calls.current.set(
            calls.Call(
                namespace=ns,
                agent_id="",
                trace_id="vote-timer",
                deadline=time.monotonic() + ACT_TIMEOUT_SECONDS,
            )
        )
        due = due_ms / 1000
        try:
            async with self._slots:
                if kind == "close":
                    done = await self._votes.close_due(ns, vote_id, key, due)
                else:
                    done = await self._votes.expire_due(ns, vote_id, key, due)
            if done:
                self._untrack(key)  # deleted in etcd; don't wait for the watch
            elif key in self._due:
                self._due[key] = clock.now() + RETRY_SECONDS
        except AccordError as exc:
            _log.info(
                "vote timer failed; will retry", kind=kind, vote_id=vote_id, error=exc.message
            )
            if key in self._due:  # try again a little later, unless it went away
                self._due[key] = clock.now() + RETRY_SECONDS
        finally:
            self._acting.discard(key)
            self._changed.set()
