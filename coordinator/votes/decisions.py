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
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from accord.coordinator import logs
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import Substrate, calls, clock, failpoints
from accord.coordinator.substrate.errors import AccordError, BackendUnavailable, NotFound
from accord.coordinator.substrate.txn import (
    KeyValue,
    Op,
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
from accord.coordinator.votes.model import (
    DECIDING_BALLOT,
    OpenVote,
    Snapshot,
    closed,
    not_found,
    parse_record,
)
from accord.v1 import votes_pb2

_log = logs.get("accord.votes")
OPEN_CACHE_SIZE = 10_000
DECIDE_ATTEMPTS = 16
BALLOT_CACHE_VOTES = 256
# A deliberate bug (tests only, ACCORD_TEST_BREAK): a ballot is stored without checking
# that its vote is still open (neither here nor in its transaction).
SKIP_OPEN_CHECK = failpoints.broken("votes.skip_open_check")


@dataclass(frozen=True, slots=True)
class _Ballots:
    """An open vote's record and ballots as read at revision, in revision order (the list
    is never changed in place: snapshots share it). running: their sums, for a vote whose
    ballots cannot change; owned by whichever entry is in the cache (snapshot() takes it
    out while it reads)."""

    vote: votes_pb2.Vote
    record_mod: int
    weights: vote_rules.Weights
    revision: int
    ballots: list[votes_pb2.Ballot]
    running: vote_rules.Running | None


@dataclass(frozen=True, slots=True)
class Decisive:
    """A ballot that decides its vote by this replica's last read of it (at revision): it
    is stored with the decision (ops) in one transaction if no other ballot came since."""

    revision: int
    snap: Snapshot  # the vote as it stands decided, the ballot last (revisions come after)
    ops: list[Op]


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
        # Entries taken out by a snapshot() reading what came since: still right as of
        # their revision until that read extends them, so a deciding ballot may use them.
        self._reading: dict[tuple[str, str], _Ballots] = {}

    async def open_record(self, ns: str, vote_id: str) -> OpenVote:
        cached = self._open.get((ns, vote_id))
        if cached is not None:
            self._open.move_to_end((ns, vote_id))
            return cached
        found = await self._etcd.range(read(self._keys.vote(ns, vote_id)))
        if not found.kvs:
            raise not_found(vote_id)
        vote = parse_record(found.kvs[0])
        if vote.status == votes_pb2.VOTE_STATUS_DECIDED and not SKIP_OPEN_CHECK:
            raise closed(vote)
        return self.remember_open(ns, vote)

    def remember_open(self, ns: str, vote: votes_pb2.Vote, *, proposed: bool = False) -> OpenVote:
        """proposed: vote was just created, so it has no ballots yet (a vote's ballots
        are deleted with its record, and a proposal needs the record absent)."""
        entry = OpenVote(vote, {v.agent_id: v.weight for v in vote.voters})
        self._open[(ns, vote.id)] = entry
        while len(self._open) > OPEN_CACHE_SIZE:
            self._open.popitem(last=False)
        if proposed:
            weights = vote_rules.weights_of(vote)
            running = None if vote.spec.allow_change else vote_rules.Running(vote, weights)
            revision = vote.created_revision
            self._keep(ns, _Ballots(vote, revision, weights, revision, [], running))
        return entry

    def _keep(self, ns: str, entry: _Ballots) -> None:
        self._ballots[(ns, entry.vote.id)] = entry
        while len(self._ballots) > BALLOT_CACHE_VOTES:
            self._ballots.popitem(last=False)

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
        if cached is not None:
            self._reading[(ns, vote_id)] = cached
        try:
            found = await self._etcd.txn(
                txn(
                    # With the record unchanged since cached, only the new ballots are read.
                    when=[mod_is(key, cached.record_mod)] if cached else [],
                    then=[ballots_since] if cached else [get(key), ballots_since],
                    otherwise=[get(key), ballots_since],
                ),
                retry=True,
            )
        finally:
            if cached is not None and self._reading.get((ns, vote_id)) is cached:
                del self._reading[(ns, vote_id)]  # about to be extended: stale from now
        revision = int(found.header.revision)
        if cached is not None and found.succeeded:
            vote, record_mod = cached.vote, cached.record_mod
            new = found.responses[0].response_range.kvs
        else:
            records = found.responses[0].response_range.kvs
            if not records:
                raise not_found(vote_id)
            vote, record_mod = parse_record(records[0]), records[0].mod_revision
            if cached is not None and cached.vote.created_revision != vote.created_revision:
                return await self.snapshot(ns, vote_id)  # another vote of that id: read it all
            new = found.responses[1].response_range.kvs
        return self._extend(ns, cached, vote, record_mod, revision, new)

    def _extend(
        self,
        ns: str,
        cached: _Ballots | None,
        vote: votes_pb2.Vote,
        record_mod: int,
        revision: int,
        new: Sequence[KeyValue],
    ) -> Snapshot:
        """cached (taken out of the cache) with the ballots stored after it, read at
        revision; kept again while the vote is open."""
        weights = cached.weights if cached is not None else vote_rules.weights_of(vote)
        fresh = []
        for raw in new:
            ballot = votes_pb2.Ballot.FromString(raw.value)
            ballot.revision = raw.mod_revision
            fresh.append(ballot)
        fresh.sort(key=lambda b: b.revision)
        running = cached.running if cached is not None else None
        if (
            cached is not None
            and running is not None
            and not any(running.has(b.voter) for b in fresh)
        ):
            ballots = cached.ballots + fresh  # all newer than the cached ones: still in order
        else:  # a first read, or a ballot replaced: count them all again
            by_voter = {b.voter: b for b in cached.ballots} if cached is not None else {}
            by_voter.update((b.voter, b) for b in fresh)
            ballots = sorted(by_voter.values(), key=lambda b: b.revision)
            fresh = ballots
            running = None if vote.spec.allow_change else vote_rules.Running(vote, weights)
        count = None
        if running is not None:
            for ballot in fresh:
                running.add(ballot)
            count = running.count()
        if vote.status == votes_pb2.VOTE_STATUS_OPEN:
            self._keep(ns, _Ballots(vote, record_mod, weights, revision, ballots, running))
        return Snapshot(revision, vote, record_mod, ballots, weights, count)

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
            verdict = _verdict(snap)
            if verdict is None:
                return snap
            decided = await self.decide(ns, snap, verdict)
            if decided is not None:
                return decided
        raise BackendUnavailable(
            f"vote {vote_id!r} kept changing while being decided; try again",
            metadata={"vote_id": vote_id},
        )

    async def settle_known(self, ns: str, snap: Snapshot) -> Snapshot | None:
        """settle_quietly, starting from snap (read by the caller's own write) instead of
        a fresh read: decided at once if snap's outcome is certain."""
        verdict = _verdict(snap)
        if verdict is None:
            return snap
        try:
            decided = await self.decide(ns, snap, verdict)
        except AccordError as exc:
            _log.info(
                "could not decide a vote after a ballot", vote_id=snap.vote.id, error=exc.message
            )
            return None
        return decided if decided is not None else await self.settle_quietly(ns, snap.vote.id)

    # --- the deciding ballot ------------------------------------------------------

    def decisive(self, ns: str, vote_id: str, ballot: votes_pb2.Ballot) -> Decisive | None:
        """What would decide the vote along with ballot, if this replica's last read of it
        plus ballot makes the outcome certain; None otherwise (or when nothing was read,
        or the deadline passed: the usual way then)."""
        cached = self._ballots.get((ns, vote_id)) or self._reading.get((ns, vote_id))
        if cached is None or cached.running is None:
            return None
        vote = cached.vote
        count = cached.running.count_with(ballot)
        if count is None or vote_rules.settle_count(vote, count) is None:
            return None  # O(1): most ballots stop here
        if clock.now() >= vote_spec.deadline_of(vote):
            return None
        snap = Snapshot(
            cached.revision, vote, cached.record_mod, [*cached.ballots, ballot], cached.weights
        )
        verdict = vote_rules.settle(vote, snap.ballots, snap.weights)
        if verdict is None:
            return None
        record, ops = self._decision(ns, snap, verdict, last_ballot_revision=DECIDING_BALLOT)
        decided = Snapshot(cached.revision, record, cached.record_mod, snap.ballots, snap.weights)
        return Decisive(cached.revision, decided, ops)

    def decided_with(self, ns: str, decisive: Decisive, revision: int) -> Snapshot:
        """The vote as decisive's transaction stored it, at revision (that of the ballot,
        the last of decisive.snap.ballots, already set)."""
        vote = votes_pb2.Vote()
        vote.CopyFrom(decisive.snap.vote)
        vote.decision.revision = vote.decision.last_ballot_revision = revision
        self._closed(ns, vote, revision)
        snap = decisive.snap
        return Snapshot(revision, vote, revision, snap.ballots, snap.weights)

    def absorb(
        self, ns: str, decisive: Decisive, revision: int, new: Sequence[KeyValue]
    ) -> Snapshot | None:
        """decisive's ballot was stored without the decision (other ballots came since
        its read): the vote at revision, from the ballots that ballot's transaction read
        (those after decisive.revision, its own among them). None when this replica's
        cache moved on meanwhile."""
        vote_id = decisive.snap.vote.id
        cached = self._ballots.get((ns, vote_id))
        if cached is None or cached.revision != decisive.revision:
            return None
        del self._ballots[(ns, vote_id)]
        return self._extend(ns, cached, cached.vote, cached.record_mod, revision, new)

    def _closed(self, ns: str, vote: votes_pb2.Vote, revision: int) -> None:
        """This replica's transaction decided vote (exactly one replica's does)."""
        self._open.pop((ns, vote.id), None)
        self._ballots.pop((ns, vote.id), None)
        accord_metrics.vote_decided(ns, vote_rules.OUTCOME_NAMES[vote.decision.outcome].lower())
        _log.info(
            "vote decided",
            vote_id=vote.id,
            namespace=ns,
            outcome=vote_rules.OUTCOME_NAMES[vote.decision.outcome],
            option=vote.decision.option,
            revision=revision,
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
        record, ops = self._decision(
            ns,
            snap,
            verdict,
            last_ballot_revision=max((b.revision for b in snap.ballots), default=0),
            cancelled_by=cancelled_by,
            reason=reason,
        )
        key = self._keys.vote(ns, vote.id)
        decide = txn(
            when=[
                mod_is(key, snap.record_mod),  # still open
                none_changed_since(self._keys.ballots_prefix(ns, vote.id), snap.revision),
            ],
            then=ops,
        )
        done = await self._etcd.txn(decide, retry=True)
        if not done.succeeded:
            return None
        revision = int(done.header.revision)
        record.decision.revision = revision
        self._closed(ns, record, revision)
        return Snapshot(revision, record, revision, snap.ballots, snap.weights)

    def _decision(
        self,
        ns: str,
        snap: Snapshot,
        verdict: vote_rules.Verdict,
        *,
        last_ballot_revision: int,
        cancelled_by: str = "",
        reason: str = "",
    ) -> tuple[votes_pb2.Vote, list[Op]]:
        """The decided record (created_revision kept, as parse_record gives it) and the
        ops storing it: the record, the close timer gone, the retention timer set."""
        vote = snap.vote
        now = clock.now()
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
            last_ballot_revision=last_ballot_revision,
            quorum_met=verdict.quorum_met,
            explanation=explanation,
            decided_at=vote_spec.timestamp(now),
            cancelled_by=cancelled_by,
            cancel_reason=reason,
        )
        if verdict.decided_by != votes_pb2.DECIDED_BY_DEADLINE:  # else no call decided it
            traced = calls.current.get().trace_context  # the deciding Cast's, or the Cancel's
            if traced is not None:
                decision.trace_context.CopyFrom(traced.record())
        record = votes_pb2.Vote()
        record.CopyFrom(vote)
        record.ClearField("created_revision")
        record.status = votes_pb2.VOTE_STATUS_DECIDED
        record.decision.CopyFrom(decision)
        key = self._keys.vote(ns, vote.id)
        closes_ms = vote.spec.deadline.ToMilliseconds()
        expires_ms = int((now + vote.spec.retention_seconds) * 1000)
        ops = [
            put(key, record.SerializeToString()),
            delete(self._keys.vote_timer(closes_ms, "close", ns, vote.id)),
            put(self._keys.vote_timer(expires_ms, "expire", ns, vote.id), b""),
        ]
        record.created_revision = vote.created_revision
        return record, ops

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
            if mine and expires > clock.now():
                return False
            if mine:
                compares.append(mod_is(key, found.kvs[0].mod_revision))
                ops += [delete(key), delete(self._keys.ballots_prefix(ns, vote_id), prefix=True)]
                _log.info("vote expired", vote_id=vote_id, namespace=ns)
        # Without its record (or with a later vote's), the timer alone is stale.
        await self._etcd.txn(txn(when=compares, then=ops), retry=True)
        return True


def _verdict(snap: Snapshot) -> vote_rules.Verdict | None:
    """How snap's open vote is decided now: at its deadline whatever the ballots; before
    it, only if the outcome is certain (from the sums when there are any: O(1))."""
    if clock.now() >= vote_spec.deadline_of(snap.vote):
        return vote_rules.final(snap.vote, snap.ballots, weights=snap.weights)
    if snap.count is not None and vote_rules.settle_count(snap.vote, snap.count) is None:
        return None
    return vote_rules.settle(snap.vote, snap.ballots, snap.weights)
