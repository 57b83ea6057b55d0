"""Watching votes: every watcher of a vote on this replica shares one etcd watch.

A feed reads the vote once (deciding it first if it is due), then follows its record
and ballots from the next revision, so a watcher joining at any moment gets the state
as of the feed's latest event and then every later event, in revision order per key.
The decision ends every watcher's stream; the decision message carries the final tally,
and before it the feed sends any ballot the (possibly lagging) ballots' watcher has not
delivered yet: every ballot the decision counts is seen. A ballot stored by the
decision's own Txn comes on the same etcd stream, so the decision waits for it (at most
OWN_BALLOT_WAIT_SECONDS, then reads it); earlier ones are read at the decision's revision.
A watcher that reconnects elsewhere starts again from the state, losing nothing. A state
too large for a standard client (pages.py) carries the ballots that fit and says how many
it leaves out (ballots_omitted); exactly that many ballot messages follow it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from accord.coordinator import logs
from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import AccordError, BackendUnavailable, NotFound, require
from accord.coordinator.substrate.txn import KeyValue, read, watch
from accord.coordinator.votes import pages as vote_pages
from accord.coordinator.votes.decisions import Decisions
from accord.coordinator.votes.model import Snapshot, parse_record
from accord.coordinator.votes.spec import check_vote_id
from accord.v1 import common_pb2, votes_pb2

_log = logs.get("accord.vote_feeds")
_Item = votes_pb2.VotesWatchResponse | AccordError
# How long a decision waits for the ballot stored with it, which etcd sends on the same
# stream (its watcher's response may come second), before reading that ballot instead.
OWN_BALLOT_WAIT_SECONDS = 0.1


class _Feed:
    def __init__(self, ns: str, vote_id: str) -> None:
        self.ns = ns
        self.vote_id = vote_id
        self.snapshot: Snapshot | None = None
        self.ballots: dict[str, votes_pb2.Ballot] = {}
        # Every ballot stored at or before this revision has been seen.
        self.ballots_revision = 0
        self.subscribers: set[asyncio.Queue[_Item]] = set()
        self.ready = asyncio.Event()
        self.error: AccordError | None = None
        self.finished = False
        self.task: asyncio.Task[None] | None = None

    def state(self) -> votes_pb2.VotesWatchResponse:
        assert self.snapshot is not None
        snap = Snapshot(
            self.snapshot.revision,
            self.snapshot.vote,
            self.snapshot.record_mod,
            sorted(self.ballots.values(), key=lambda b: b.revision),
            self.snapshot.weights,
        )
        return votes_pb2.VotesWatchResponse(
            header=common_pb2.ResponseHeader(revision=snap.revision), state=snap.full()
        )

    def send(self, item: _Item) -> None:
        for queue in self.subscribers:
            queue.put_nowait(item)

    def fail(self, error: AccordError) -> None:
        self.error = error
        self.ready.set()
        self.send(error)


class VoteFeeds:
    def __init__(self, substrate: Substrate, votes: Decisions) -> None:
        self._etcd = substrate.etcd
        self._keys = substrate.keys
        self._votes = votes
        self._feeds: dict[tuple[str, str], _Feed] = {}

    async def watch(self, vote_id: str) -> AsyncIterator[votes_pb2.VotesWatchResponse]:
        """The vote's state, then its ballots as cast, then its decision (last)."""
        require(check_vote_id("vote_id", vote_id))
        ns = calls.current.get().namespace
        key = (ns, vote_id)
        feed = self._feeds.get(key)
        if feed is None or feed.error is not None or feed.finished:
            feed = _Feed(ns, vote_id)
            self._feeds[key] = feed
            feed.task = asyncio.create_task(self._follow(feed))
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        feed.subscribers.add(queue)
        try:
            await feed.ready.wait()
            if feed.error is not None:
                raise feed.error
            state = feed.state()
            while not queue.empty():  # already part of the state
                queue.get_nowait()
            # The state fits a standard client: the ballots left out follow it at once.
            first, _ = vote_pages.page(state.state)
            yield votes_pb2.VotesWatchResponse(header=state.header, state=first)
            for ballot in state.state.ballots[len(first.ballots) :]:
                yield votes_pb2.VotesWatchResponse(header=state.header, ballot=ballot)
            if state.state.status == votes_pb2.VOTE_STATUS_DECIDED:
                return
            while True:
                item = await queue.get()
                if isinstance(item, AccordError):
                    raise item
                yield item
                if item.WhichOneof("event") == "decision":
                    return
        finally:
            feed.subscribers.discard(queue)
            if not feed.subscribers:
                self._drop(feed)

    def _drop(self, feed: _Feed) -> None:
        if self._feeds.get((feed.ns, feed.vote_id)) is feed:
            del self._feeds[(feed.ns, feed.vote_id)]
        if feed.task is not None and not feed.task.done():
            feed.task.cancel()

    def end_streams(self) -> None:
        """On shutdown: end every watch so clients move to another replica."""
        for feed in list(self._feeds.values()):
            feed.fail(BackendUnavailable("this coordinator replica is shutting down; watch again"))
            self._drop(feed)

    async def _follow(self, feed: _Feed) -> None:
        calls.current.set(
            calls.Call(namespace=feed.ns, agent_id="", trace_id="vote-feed", deadline=None)
        )
        try:
            await self._follow_events(feed)
        except asyncio.CancelledError:
            raise
        except AccordError as exc:
            feed.fail(exc)
        except Exception as exc:  # a broken feed must end its streams, clearly
            _log.info("vote feed failed", vote_id=feed.vote_id, error=str(exc))
            feed.fail(BackendUnavailable(f"the vote's watch broke ({exc}); watch again"))
        else:
            decided = feed.snapshot is not None and (
                feed.snapshot.vote.status == votes_pb2.VOTE_STATUS_DECIDED
            )
            # Decided: every stream has its last message. Otherwise the watch ended early.
            feed.finished = True  # later watchers start a fresh feed
            if not decided:
                feed.fail(BackendUnavailable("the vote's watch ended; watch again"))
        finally:
            if self._feeds.get((feed.ns, feed.vote_id)) is feed:
                del self._feeds[(feed.ns, feed.vote_id)]

    async def _follow_events(self, feed: _Feed) -> None:
        snap = await self._votes.settle(feed.ns, feed.vote_id)
        feed.snapshot = snap
        feed.ballots = {b.voter: b for b in snap.ballots}
        feed.ballots_revision = snap.revision
        feed.ready.set()
        if snap.vote.status == votes_pb2.VOTE_STATUS_DECIDED:
            return
        record = self._keys.vote(feed.ns, feed.vote_id)
        prefix = self._keys.ballots_prefix(feed.ns, feed.vote_id)
        creates = [
            watch(record, start_revision=snap.revision + 1),
            watch(prefix, prefix=True, start_revision=snap.revision + 1),
        ]
        responses = aiter(self._etcd.watch(creates))
        decided: tuple[votes_pb2.Vote, int] | None = None  # waiting for its own ballot
        following: asyncio.Future[Any] | None = None
        try:
            while True:
                if decided is None:
                    response = await anext(responses, None)
                else:
                    following = following or asyncio.ensure_future(anext(responses, None))
                    done, _ = await asyncio.wait({following}, timeout=OWN_BALLOT_WAIT_SECONDS)
                    if not done:  # not on its way after all: read it
                        await self._catch_up(feed, prefix, decided[1])
                        self._decided(feed, *decided)
                        return
                    response, following = following.result(), None
                if response is None:
                    return
                for event in response.events:
                    kv = event.kv
                    if kv.key == record:
                        if event.type == event.DELETE:
                            raise NotFound(f"vote {feed.vote_id!r} was deleted")
                        vote = parse_record(kv)
                        if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
                            decided = (vote, kv.mod_revision)
                    elif event.type == event.PUT:
                        self._offer(feed, kv)
                        # One watcher's events come in revision order.
                        feed.ballots_revision = max(feed.ballots_revision, kv.mod_revision)
                if decided is None:
                    continue
                # Every ballot the decision counts goes out before it. The ballots' watcher
                # may lag the record's: a ballot stored with the decision (one revision) is
                # on its way on this stream; an earlier one is read as etcd held it then.
                vote, revision = decided
                needed = vote.decision.last_ballot_revision
                if feed.ballots_revision >= needed:
                    self._decided(feed, vote, revision)
                    return
                if needed != revision:
                    await self._catch_up(feed, prefix, revision)
                    self._decided(feed, vote, revision)
                    return
        finally:
            if following is not None:
                following.cancel()

    @staticmethod
    def _decided(feed: _Feed, vote: votes_pb2.Vote, revision: int) -> None:
        assert feed.snapshot is not None
        feed.snapshot = Snapshot(revision, vote, revision, [], feed.snapshot.weights)
        header = common_pb2.ResponseHeader(revision=revision)
        feed.send(votes_pb2.VotesWatchResponse(header=header, decision=vote.decision))

    async def _catch_up(self, feed: _Feed, prefix: bytes, revision: int) -> None:
        found = await self._etcd.range(read(prefix, prefix=True, revision=revision))
        for kv in sorted(found.kvs, key=lambda kv: kv.mod_revision):
            self._offer(feed, kv)

    @staticmethod
    def _offer(feed: _Feed, kv: KeyValue) -> None:
        """A ballot as stored at kv.mod_revision: sent unless already sent."""
        ballot = votes_pb2.Ballot.FromString(kv.value)
        seen = feed.ballots.get(ballot.voter)
        if seen is not None and seen.revision >= kv.mod_revision:
            return
        ballot.revision = kv.mod_revision
        feed.ballots[ballot.voter] = ballot
        assert feed.snapshot is not None
        feed.snapshot = Snapshot(
            max(kv.mod_revision, feed.snapshot.revision),
            feed.snapshot.vote,
            feed.snapshot.record_mod,
            [],
            feed.snapshot.weights,
        )
        header = common_pb2.ResponseHeader(revision=kv.mod_revision)
        feed.send(votes_pb2.VotesWatchResponse(header=header, ballot=ballot))
