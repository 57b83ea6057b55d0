"""Reading votes and deciding them, exactly once, on whichever replica gets there first.

A decision is written by one Txn that checks the record is still open *and* that no
ballot changed after the revision the tally was read at. So the decision counts exactly
the ballots accepted before it, and no ballot is accepted after it. Two replicas deciding
at once (a deadline, a last ballot) cannot both succeed; the loser re-reads and finds the
decision. Decision writes bypass group commit: a batch evaluates every compare before
any write, so a decision must never share a batch with a ballot for its vote.

This replica keeps two caches, both only optimizations: open votes' records (immutable
until decided; every ballot's Txn checks the record is unchanged) and open votes' ballots
as last read (re-read incrementally while the record is unchanged).

Error handling: a vote that keeps changing while being decided is BACKEND_UNAVAILABLE
after DECIDE_ATTEMPTS (retry); a missing vote is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from accord.coordinator import logs
from accord.coordinator.substrate import Substrate
from accord.coordinator.substrate.errors import AccordError, BackendUnavailable, NotFound
from accord.coordinator.substrate.txn import (
    delete,
    get,
    get_prefix,
    mod_is,
    none_changed_since,
    put,
    read,
    txn,
)
from accord.coordinator.votes import rules as vote_rules
from accord.coordinator.votes import spec as vote_spec
from accord.coordinator.votes.model import OpenVote, Snapshot, closed, not_found, parse_record
from accord.v1 import votes_pb2

_log = logs.get("accord.votes")
OPEN_CACHE_SIZE = 10_000
DECIDE_ATTEMPTS = 16
BALLOT_CACHE_VOTES = 256


@dataclass(frozen=True, slots=True)
class _Ballots:
    """An open vote's record and ballots as read at revision (never changed in place)."""

    vote: votes_pb2.Vote
    record_mod: int
    weights: vote_rules.Weights
    revision: int
    ballots: dict[str, votes_pb2.Ballot]


@dataclass(slots=True)
class _Coalesced:
    """Settling requests for one vote: a run that starts after a request answers it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requested: int = 0
    completed: int = -1
    result: Snapshot | None = None
    users: int = 0


class Decisions:
    def __init__(self, substrate: Substrate) -> None:
        self._etcd = substrate.etcd
        self._keys = substrate.keys
        # Open votes' records: immutable until decided, and a stale entry is harmless
        # (every ballot's Txn checks the record is unchanged).
        self._open: OrderedDict[tuple[str, str], OpenVote] = OrderedDict()
        self._settling: dict[tuple[str, str], _Coalesced] = {}
        self._ballots: OrderedDict[tuple[str, str], _Ballots] = OrderedDict()

    async def open_record(self, ns: str, vote_id: str) -> OpenVote:
        cached = self._open.get((ns, vote_id))
        if cached is not None:
            self._open.move_to_end((ns, vote_id))
            return cached
        found = await self._etcd.range(read(self._keys.vote(ns, vote_id)))
        if not found.kvs:
            raise not_found(vote_id)
        vote = parse_record(found.kvs[0])
        if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
            raise closed(vote)
        return self.remember_open(ns, vote)

    def remember_open(self, ns: str, vote: votes_pb2.Vote) -> OpenVote:
        entry = OpenVote(vote, {v.agent_id: v.weight for v in vote.voters})
        self._open[(ns, vote.id)] = entry
        while len(self._open) > OPEN_CACHE_SIZE:
            self._open.popitem(last=False)
        return entry

    async def snapshot(self, ns: str, vote_id: str) -> Snapshot:
        """The record and every ballot at one revision (one etcd round trip). For an open
        vote read before, only what changed since is fetched: ballots are never deleted
        while their vote exists, so the earlier ones still stand."""
        key = self._keys.vote(ns, vote_id)
        cached = self._ballots.pop((ns, vote_id), None)
        ballots_since = get_prefix(
            self._keys.ballots_prefix(ns, vote_id),
            min_mod_revision=cached.revision + 1 if cached else 0,
        )
        found = await self._etcd.txn(
            txn(
                # With the record unchanged since cached, only the new ballots are read.
                when=[mod_is(key, cached.record_mod)] if cached else [],
                then=[ballots_since] if cached else [get(key), ballots_since],
                otherwise=[get(key), ballots_since],
            ),
            retry=True,
        )
        revision = int(found.header.revision)
        if cached is not None and found.succeeded:
            vote, record_mod, weights = cached.vote, cached.record_mod, cached.weights
            ballots = dict(cached.ballots)
            new = found.responses[0].response_range.kvs
        else:
            records = found.responses[0].response_range.kvs
            if not records:
                raise not_found(vote_id)
            vote, record_mod = parse_record(records[0]), records[0].mod_revision
            if cached is not None and cached.vote.created_revision != vote.created_revision:
                return await self.snapshot(ns, vote_id)  # another vote of that id: read it all
            weights = cached.weights if cached is not None else vote_rules.weights_of(vote)
            ballots = dict(cached.ballots) if cached is not None else {}
            new = found.responses[1].response_range.kvs
        for raw in new:
            ballot = votes_pb2.Ballot.FromString(raw.value)
            ballot.revision = raw.mod_revision
            ballots[ballot.voter] = ballot
        if vote.status == votes_pb2.VOTE_STATUS_OPEN:
            self._ballots[(ns, vote_id)] = _Ballots(vote, record_mod, weights, revision, ballots)
            while len(self._ballots) > BALLOT_CACHE_VOTES:
                self._ballots.popitem(last=False)
        return Snapshot(
            revision,
            vote,
            record_mod,
            sorted(ballots.values(), key=lambda b: b.revision),
            weights,
        )

    async def snapshot_at(self, ns: str, vote_id: str, revision: int) -> Snapshot:
        """The record and every ballot as etcd held them at revision (a later page of a
        Get). Compacted when etcd no longer has it; NOT_FOUND when the vote did not
        exist then."""
        record = await self._etcd.range(read(self._keys.vote(ns, vote_id), revision=revision))
        if not record.kvs:
            raise not_found(vote_id)
        prefix = self._keys.ballots_prefix(ns, vote_id)
        found = await self._etcd.range(read(prefix, prefix=True, revision=revision))
        ballots = []
        for raw in found.kvs:
            ballot = votes_pb2.Ballot.FromString(raw.value)
            ballot.revision = raw.mod_revision
            ballots.append(ballot)
        vote = parse_record(record.kvs[0])
        return Snapshot(revision, vote, record.kvs[0].mod_revision, ballots)

    async def settle(self, ns: str, vote_id: str) -> Snapshot:
        """The vote as it stands, decided first if it is due or its outcome certain.
        Concurrent calls for one vote share reads: a run that started after a call was
        made answers it."""
        key = (ns, vote_id)
        entry = self._settling.setdefault(key, _Coalesced())
        entry.users += 1
        entry.requested += 1
        ticket = entry.requested
        try:
            async with entry.lock:
                if entry.completed >= ticket and entry.result is not None:
                    return entry.result
                started = entry.requested
                result = await self._settle_once(ns, vote_id)
                entry.completed, entry.result = started, result
                return result
        finally:
            entry.users -= 1
            if not entry.users:
                del self._settling[key]

    async def settle_quietly(self, ns: str, vote_id: str) -> Snapshot | None:
        """settle, for a caller whose own write already succeeded: a failure here must not
        turn that success into an error (the deadline timer or the next read decides)."""
        try:
            return await self.settle(ns, vote_id)
        except AccordError as exc:
            _log.info("could not settle a vote after a ballot", vote_id=vote_id, error=exc.message)
            return None

    async def _settle_once(self, ns: str, vote_id: str) -> Snapshot:
        for _ in range(DECIDE_ATTEMPTS):
            snap = await self.snapshot(ns, vote_id)
            if snap.vote.status == votes_pb2.VOTE_STATUS_DECIDED:
                self._open.pop((ns, vote_id), None)
                return snap
            if time.time() >= vote_spec.deadline_of(snap.vote):
                verdict: vote_rules.Verdict | None = vote_rules.final(
                    snap.vote, snap.ballots, weights=snap.weights
                )
            else:
                verdict = vote_rules.settle(snap.vote, snap.ballots, snap.weights)
            if verdict is None:
                return snap
            decided = await self.decide(ns, snap, verdict)
            if decided is not None:
                return decided
        raise BackendUnavailable(
            f"vote {vote_id!r} kept changing while being decided; try again",
            metadata={"vote_id": vote_id},
        )

    async def decide(
        self,
        ns: str,
        snap: Snapshot,
        verdict: vote_rules.Verdict,
        *,
        cancelled_by: str = "",
        reason: str = "",
    ) -> Snapshot | None:
        """Write the decision if nothing changed since snap; None if something did."""
        vote = snap.vote
        now = time.time()
        explanation = verdict.explanation
        tally = vote_rules.tally(vote, snap.ballots, snap.weights)
        missing = len(vote.voters) - tally.participated
        if verdict.decided_by == votes_pb2.DECIDED_BY_CERTAINTY and missing:
            explanation += (
                f" Decided before the deadline: the {missing} missing voter"
                f"{'s' if missing != 1 else ''} could not change the outcome."
            )
        decision = votes_pb2.Decision(
            outcome=verdict.outcome,
            option=verdict.option,
            decided_by=verdict.decided_by,
            tally=tally,
            last_ballot_revision=max((b.revision for b in snap.ballots), default=0),
            quorum_met=verdict.quorum_met,
            explanation=explanation,
            decided_at=vote_spec.timestamp(now),
            cancelled_by=cancelled_by,
            cancel_reason=reason,
        )
        record = votes_pb2.Vote()
        record.CopyFrom(vote)
        record.ClearField("created_revision")
        record.status = votes_pb2.VOTE_STATUS_DECIDED
        record.decision.CopyFrom(decision)
        key = self._keys.vote(ns, vote.id)
        closes_ms = vote.spec.deadline.ToMilliseconds()
        expires_ms = int((now + vote.spec.retention_seconds) * 1000)
        decide = txn(
            when=[
                mod_is(key, snap.record_mod),  # still open
                none_changed_since(self._keys.ballots_prefix(ns, vote.id), snap.revision),
            ],
            then=[
                put(key, record.SerializeToString()),
                delete(self._keys.vote_timer(closes_ms, "close", ns, vote.id)),
                put(self._keys.vote_timer(expires_ms, "expire", ns, vote.id), b""),
            ],
        )
        done = await self._etcd.txn(decide, retry=True)
        if not done.succeeded:
            return None
        self._open.pop((ns, vote.id), None)
        revision = int(done.header.revision)
        record.created_revision = vote.created_revision
        record.decision.revision = revision
        _log.info(
            "vote decided",
            vote_id=vote.id,
            namespace=ns,
            outcome=vote_rules.OUTCOME_NAMES[verdict.outcome],
            option=verdict.option,
            revision=revision,
        )
        return Snapshot(revision, record, revision, snap.ballots, snap.weights)

    # --- timers -------------------------------------------------------------------

    async def close_due(self, ns: str, vote_id: str, timer: bytes, due: float) -> bool:
        """A close timer fired: decide the vote (any replica may; one decision results).
        False: not due yet by this record, try later."""
        try:
            snap = await self.settle(ns, vote_id)
        except NotFound:
            await self._etcd.txn(txn(then=[delete(timer)]), retry=True)
            return True
        if snap.vote.status == votes_pb2.VOTE_STATUS_OPEN:
            if abs(vote_spec.deadline_of(snap.vote) - due) > 1:  # an earlier vote's timer
                await self._etcd.txn(txn(then=[delete(timer)]), retry=True)
                return True
            return False
        # Normally deleted with the decision; one left behind (the vote decided on
        # another replica meanwhile, or an earlier vote of that id) is stale.
        await self._etcd.txn(txn(then=[delete(timer)]), retry=True)
        return True

    async def expire_due(self, ns: str, vote_id: str, timer: bytes, due: float) -> bool:
        """A retention timer fired: delete the decided vote and its ballots. False: not
        due yet by the record (this replica's clock runs ahead), try later."""
        key = self._keys.vote(ns, vote_id)
        found = await self._etcd.range(read(key))
        ops = [delete(timer)]
        compares = []
        if found.kvs:
            vote = parse_record(found.kvs[0])
            expires = vote.decision.decided_at.ToMilliseconds() / 1000 + vote.spec.retention_seconds
            mine = vote.status == votes_pb2.VOTE_STATUS_DECIDED and abs(expires - due) <= 2
            if mine and expires > time.time():
                return False
            if mine:
                compares.append(mod_is(key, found.kvs[0].mod_revision))
                ops += [delete(key), delete(self._keys.ballots_prefix(ns, vote_id), prefix=True)]
                _log.info("vote expired", vote_id=vote_id, namespace=ns)
        # Without its record (or with a later vote's), the timer alone is stale.
        await self._etcd.txn(txn(when=compares, then=ops), retry=True)
        return True
