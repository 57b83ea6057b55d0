"""Quorum votes: proposals, ballots and exactly-once decisions, all in etcd.

Layout (see records.proto): the vote record at {root}/ns/{ns}/votes/{id}, one key per
voter's ballot under {root}/ns/{ns}/ballots/{id}\\0, and timers every replica follows
(vote_timers.py) for deadlines and retention.

Guarantees:
- A ballot is stored by a Txn that checks the vote is still open (its record unchanged
  since creation), the voter's previous ballot, the caller's fence and its request_id.
- A decision is written by one Txn that checks the record is still open *and* that no
  ballot changed after the revision the tally was read at. So the decision counts
  exactly the ballots accepted before it, and no ballot is accepted after it. Two
  replicas deciding at once (a deadline, a last ballot) cannot both succeed; the loser
  re-reads and finds the decision.
- Outcomes are pure functions of the record and its ballots (vote_rules.py); the only
  clock is the deadline, compared by whichever replica closes the vote.
- Decision writes bypass group commit: a batch evaluates every compare before any write,
  so a decision must never share a batch with a ballot for its vote.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aetcd.rpc import rpc_pb2 as rpc
from google.rpc import status_pb2

from accord.coordinator import logs
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.store import LockStore
from accord.coordinator.substrate import calls, failpoints
from accord.coordinator.substrate.errors import (
    AccordError,
    AlreadyVoted,
    BackendUnavailable,
    ConditionFailed,
    FieldViolation,
    InvalidArgument,
    NotEligible,
    NotFound,
    NotPermitted,
    RequestIdReused,
    StoredFailure,
    VoteClosed,
    clip,
    require,
)
from accord.coordinator.substrate.etcd import Etcd, mod_is, prefix_end, put_op, version_is
from accord.coordinator.substrate.group_commit import Committed, GroupCommitter
from accord.coordinator.substrate.idempotency import Idempotency, Prior, fingerprint, send_retained
from accord.coordinator.substrate.limits import check_request_id
from accord.coordinator.substrate.retention import RetentionLeases
from accord.coordinator.votes import rules as vote_rules
from accord.coordinator.votes import spec as vote_spec
from accord.v1 import common_pb2, votes_pb2

_log = logs.get("accord.votes")
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
OPEN_CACHE_SIZE = 10_000
DECIDE_ATTEMPTS = 16
BALLOT_CACHE_VOTES = 256
TIMERS = "vote-timers"


@dataclass(slots=True)
class Snapshot:
    """A vote and its ballots as etcd held them at one revision."""

    revision: int
    vote: votes_pb2.Vote  # the record: no ballots, no tally
    record_mod: int
    ballots: list[votes_pb2.Ballot]
    weights: vote_rules.Weights | None = None  # of vote.voters, when already computed

    def full(self) -> votes_pb2.Vote:
        """The vote with its ballots and tally, as Get and Watch show it."""
        out = votes_pb2.Vote()
        out.CopyFrom(self.vote)
        out.ballots.extend(self.ballots)
        if out.status == votes_pb2.VOTE_STATUS_DECIDED:
            out.tally.CopyFrom(out.decision.tally)
        else:
            out.tally.CopyFrom(vote_rules.tally(self.vote, self.ballots, self.weights))
        return out


class _OpenVote(NamedTuple):
    """An open vote's record and its voters' weights."""

    vote: votes_pb2.Vote
    weights: dict[str, float]


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


class VoteStore:
    def __init__(
        self,
        etcd: Etcd,
        committer: GroupCommitter,
        retention: RetentionLeases,
        idempotency: Idempotency,
        leases: LeaseStore,
        locks: LockStore,
        *,
        root: str,
        admin_agents: Sequence[str] = ("admin",),
    ) -> None:
        self._etcd = etcd
        self._committer = committer
        self._retention = retention
        self._idempotency = idempotency
        self._leases = leases
        self._locks = locks
        self._root = root
        self._admins = frozenset(admin_agents)
        # Open votes' records: immutable until decided, and a stale entry is harmless
        # (every ballot's Txn checks the record is unchanged).
        self._open: OrderedDict[tuple[str, str], _OpenVote] = OrderedDict()
        self._settling: dict[tuple[str, str], _Coalesced] = {}
        self._ballots: OrderedDict[tuple[str, str], _Ballots] = OrderedDict()

    # --- keys ---------------------------------------------------------------------

    def record_key(self, ns: str, vote_id: str) -> bytes:
        return f"{self._root}/ns/{ns}/votes/{vote_id}".encode()

    def records_prefix(self, ns: str) -> bytes:
        return f"{self._root}/ns/{ns}/votes/".encode()

    def ballots_prefix(self, ns: str, vote_id: str) -> bytes:
        return f"{self._root}/ns/{ns}/ballots/{vote_id}\x00".encode()

    def ballot_key(self, ns: str, vote_id: str, agent: str) -> bytes:
        return self.ballots_prefix(ns, vote_id) + agent.encode()

    @property
    def timers_prefix(self) -> bytes:
        return f"{self._root}/{TIMERS}/".encode()

    def timer_key(self, due_ms: int, kind: str, ns: str, vote_id: str) -> bytes:
        return self.timers_prefix + f"{due_ms:016x}\x00{kind}\x00{ns}\x00{vote_id}".encode()

    # --- propose ------------------------------------------------------------------

    async def propose(
        self, vote_id: str, spec: votes_pb2.VoteSpec, request_id: str
    ) -> tuple[int, votes_pb2.Vote]:
        call = calls.current.get()
        now = time.time()
        violations = vote_spec.check_vote_id("vote_id", vote_id, allow_empty=True)
        violations += check_request_id("request_id", request_id)
        violations += vote_spec.check_spec(spec, now)
        require(violations)
        normal = vote_spec.normalise(spec, now)
        if normal.electorate.WhichOneof("source") == "voters":
            voters = list(normal.electorate.voters.voters)  # checked with the spec
        else:
            voters = await self._by_labels(dict(normal.electorate.lease_labels.labels))
            require(vote_spec.check_against_electorate(normal, voters))
        derived = not vote_id
        if derived:
            vote_id = _derived_id(call.agent_id, request_id)
        vote = votes_pb2.Vote(
            id=vote_id,
            spec=normal,
            voters=sorted(voters, key=lambda v: v.agent_id),
            proposed_by=common_pb2.Provenance(
                agent_id=call.agent_id, written_at=vote_spec.timestamp(now), request_id=request_id
            ),
            status=votes_pb2.VOTE_STATUS_OPEN,
        )
        key = self.record_key(call.namespace, vote_id)
        closes = self.timer_key(normal.deadline.ToMilliseconds(), "close", call.namespace, vote_id)
        txn = rpc.TxnRequest(
            compare=[version_is(key, 0)],
            success=[put_op(key, vote.SerializeToString()), put_op(closes, b"")],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        # Safe to resend: a resent proposal finds its own record and answers with it.
        done = await self._etcd.txn(txn, retry=True)
        if done.succeeded:
            vote.created_revision = done.header.revision
            self._remember_open(call.namespace, vote)
            return int(done.header.revision), vote
        raw = done.responses[0].response_range.kvs[0]
        existing = parse_record(raw)
        if not _same_proposal(existing.spec, normal, spec):
            if derived and request_id:
                raise RequestIdReused(
                    f"request_id {request_id!r} already proposed vote {vote_id!r} with a "
                    "different proposal; use a fresh request_id for a new vote",
                    metadata={"request_id": request_id, "vote_id": vote_id},
                )
            raise ConditionFailed(
                f"vote {vote_id!r} already exists with a different proposal (created at "
                f"revision {raw.create_revision}); pick another vote_id",
                metadata={"vote_id": vote_id, "created_revision": str(raw.create_revision)},
            )
        return int(done.header.revision), existing

    async def _by_labels(self, selector: dict[str, str]) -> list[votes_pb2.Voter]:
        agents = sorted(
            {
                info.agent_id
                for info, _ in await self._leases.list()
                if info.agent_id and all(info.labels.get(k) == v for k, v in selector.items())
            }
        )
        if not agents:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "spec.electorate.lease_labels",
                        "no live lease of an identified agent carries labels "
                        + clip(str(selector), 200),
                    )
                ]
            )
        return [votes_pb2.Voter(agent_id=a, weight=1.0) for a in agents]

    # --- cast ---------------------------------------------------------------------

    async def cast(
        self,
        vote_id: str,
        *,
        choice: str,
        abstain: bool,
        veto: bool,
        rationale: str,
        confidence: float,
        request_id: str,
        fence: common_pb2.Fence | None,
    ) -> tuple[int, votes_pb2.Ballot, Snapshot | None]:
        """Store the caller's ballot. Returns its revision, the ballot, and the vote as it
        stands after it (None if that could not be read)."""
        call = calls.current.get()
        ns, agent = call.namespace, call.agent_id
        require(
            vote_spec.check_vote_id("vote_id", vote_id) + check_request_id("request_id", request_id)
        )
        vote, weights = await self._open_record(ns, vote_id)
        weight = weights.get(agent)
        malformed, ineligible = vote_spec.check_ballot(
            vote,
            agent,
            weight,
            choice=choice,
            abstain=abstain,
            veto=veto,
            rationale=rationale,
            confidence=confidence,
        )
        if ineligible:
            raise NotEligible(
                f"{ineligible}; the ballot was not stored",
                metadata={"vote_id": vote_id, "agent_id": agent},
            )
        require(malformed)
        if time.time() >= vote_spec.deadline_of(vote):
            snap = await self.settle(ns, vote_id)
            raise _closed(snap.vote)
        digest = fingerprint(
            b"vote-cast",
            vote_id.encode(),
            choice.encode(),
            bytes([abstain, veto]),
            rationale.encode(),
            repr(confidence).encode(),
            fence.SerializeToString(deterministic=True) if fence is not None else b"",
        )
        ballot = votes_pb2.Ballot(
            voter=agent,
            choice=choice,
            abstain=abstain,
            veto=veto,
            rationale=rationale,
            confidence=confidence,
            weight=weight or 0.0,
            cast_at=vote_spec.timestamp(time.time()),
            request_id=request_id,
        )
        key = self.ballot_key(ns, vote_id, agent)
        inner, keys, stored, expected_mod = await self._ballot_txn(ns, vote, ballot, key, fence)
        committed, prior = await self._commit(
            inner, keys, stored.ByteSize() + len(key), request_id, digest
        )
        if prior is not None:
            return await self._replay_cast(ns, vote_id, key, prior)
        idem = self._idempotency.key(ns, agent, request_id) if request_id else b""
        if committed.response.succeeded:
            failpoints.hit("votes.cast.after_commit")
            stored.revision = committed.revision
            if idem:
                answer = votes_pb2.CastResponse(
                    header=common_pb2.ResponseHeader(revision=committed.revision), ballot=stored
                )
                self._idempotency.remember(
                    idem, committed.revision, digest, True, answer.SerializeToString()
                )
            return committed.revision, stored, await self._settle_quietly(ns, vote_id)
        try:
            existing = await self._refused(vote, committed.response, ballot, expected_mod, fence)
        except AccordError as exc:
            if idem:
                self._idempotency.remember(
                    idem, committed.revision, digest, False, exc.to_status().SerializeToString()
                )
            raise
        # The same ballot was stored before (a retry without request_id): that is success.
        if idem:
            answer = votes_pb2.CastResponse(
                header=common_pb2.ResponseHeader(revision=existing.revision), ballot=existing
            )
            self._idempotency.remember(
                idem, committed.revision, digest, True, answer.SerializeToString()
            )
        return existing.revision, existing, await self._settle_quietly(ns, vote_id)

    async def _ballot_txn(
        self,
        ns: str,
        vote: votes_pb2.Vote,
        ballot: votes_pb2.Ballot,
        key: bytes,
        fence: common_pb2.Fence | None,
    ) -> tuple[Any, set[bytes], votes_pb2.Ballot, int]:
        """The Txn storing ballot while the vote is open, the voter's previous ballot is
        the one seen (none, unless changes are allowed) and the fence holds; the keys it
        touches, the ballot as stored (with what it replaces) and the previous ballot's
        mod revision (0: none)."""
        record = self.record_key(ns, vote.id)
        stored = votes_pb2.Ballot()
        stored.CopyFrom(ballot)
        guard = version_is(key, 0)
        expected_mod = 0
        if vote.spec.allow_change:
            found = await self._etcd.range(rpc.RangeRequest(key=key))
            if found.kvs:
                previous = votes_pb2.Ballot.FromString(found.kvs[0].value)
                history = list(previous.replaced)
                previous.ClearField("replaced")
                previous.revision = found.kvs[0].mod_revision
                stored.replaced.extend([*history, previous])
                expected_mod = found.kvs[0].mod_revision
                guard = mod_is(key, expected_mod)
        compares = [mod_is(record, vote.created_revision), guard]
        failure = [
            rpc.RequestOp(request_range=rpc.RangeRequest(key=record)),
            rpc.RequestOp(request_range=rpc.RangeRequest(key=key)),
        ]
        keys = {key}
        if fence is not None:
            for check in await self._locks.fence_compares([fence], field="fence"):
                compares.extend(check.compares)
                keys.add(check.key)
        inner = rpc.TxnRequest(
            compare=compares, success=[put_op(key, stored.SerializeToString())], failure=failure
        )
        return inner, keys, stored, expected_mod

    async def _commit(
        self, inner: Any, keys: set[bytes], size: int, request_id: str, digest: bytes
    ) -> tuple[Committed, Prior | None]:
        weight = 1 + max(len(inner.compare), len(inner.success), len(inner.failure))
        if not request_id:
            return await self._committer.commit(
                inner, keys, size + 128, retry=False, weight=weight
            ), None
        call = calls.current.get()
        idem = self._idempotency.key(call.namespace, call.agent_id, request_id)
        keys = keys | {idem}
        committed = await send_retained(
            self._retention,
            inner,
            idem,
            digest,
            lambda txn: self._committer.commit(
                txn, keys, size + len(idem) + 128, retry=True, weight=weight + 1
            ),
        )
        response, prior = Idempotency.unwrap(committed.response, digest, request_id)
        return Committed(response, committed.revision), prior

    async def _refused(
        self,
        vote: votes_pb2.Vote,
        response: Any,
        ballot: votes_pb2.Ballot,
        expected_mod: int,
        fence: common_pb2.Fence | None,
    ) -> votes_pb2.Ballot:
        """Why a ballot's Txn did not apply, raised; or the identical ballot already
        stored (returned: casting it again is not an error)."""
        records = response.responses[0].response_range.kvs
        if not records:
            raise _not_found(vote.id)
        if records[0].mod_revision != vote.created_revision:
            current = parse_record(records[0])
            if current.status != votes_pb2.VOTE_STATUS_DECIDED:
                raise _not_found(vote.id)  # deleted and proposed again meanwhile
            raise _closed(current)
        ballots = response.responses[1].response_range.kvs
        if (ballots[0].mod_revision if ballots else 0) != expected_mod:
            if vote.spec.allow_change or not ballots:
                raise ConditionFailed(
                    "your ballot changed while this one was being cast (another call from "
                    "the same agent); read the vote and cast again",
                    metadata={"vote_id": vote.id},
                )
            existing = votes_pb2.Ballot.FromString(ballots[0].value)
            existing.revision = ballots[0].mod_revision
            if (existing.choice, existing.abstain, existing.veto) == (
                ballot.choice,
                ballot.abstain,
                ballot.veto,
            ):
                return existing
            raise AlreadyVoted(
                f"agent {ballot.voter!r} already voted {_ballot_words(existing)} at revision "
                f"{existing.revision}, and this vote does not allow changing a ballot",
                details=[_brief_ballot(existing)],
                metadata={"vote_id": vote.id, "revision": str(existing.revision)},
            )
        if fence is not None:
            raise await self._locks.fenced(fence)
        raise ConditionFailed("the ballot could not be stored; cast it again")

    async def _replay_cast(
        self, ns: str, vote_id: str, key: bytes, prior: Prior
    ) -> tuple[int, votes_pb2.Ballot, Snapshot | None]:
        record = prior.record
        if record.answer:
            if not record.applied:
                raise StoredFailure(status_pb2.Status.FromString(record.answer))
            answer = votes_pb2.CastResponse.FromString(record.answer)
            return prior.revision, answer.ballot, await self._settle_quietly(ns, vote_id)
        # The first attempt's replica died before it stored its answer: rebuild it.
        found = await self._etcd.range(rpc.RangeRequest(key=key))
        if record.applied and found.kvs:
            ballot = votes_pb2.Ballot.FromString(found.kvs[0].value)
            ballot.revision = found.kvs[0].mod_revision
            return prior.revision, ballot, await self._settle_quietly(ns, vote_id)
        raise ConditionFailed(
            "the first attempt with this request_id was refused (the vote was closed, the "
            "ballot already cast, or the fence lost); read the vote for its state",
            metadata={"vote_id": vote_id},
        )

    async def _open_record(self, ns: str, vote_id: str) -> _OpenVote:
        cached = self._open.get((ns, vote_id))
        if cached is not None:
            self._open.move_to_end((ns, vote_id))
            return cached
        found = await self._etcd.range(rpc.RangeRequest(key=self.record_key(ns, vote_id)))
        if not found.kvs:
            raise _not_found(vote_id)
        vote = parse_record(found.kvs[0])
        if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
            raise _closed(vote)
        return self._remember_open(ns, vote)

    def _remember_open(self, ns: str, vote: votes_pb2.Vote) -> _OpenVote:
        entry = _OpenVote(vote, {v.agent_id: v.weight for v in vote.voters})
        self._open[(ns, vote.id)] = entry
        while len(self._open) > OPEN_CACHE_SIZE:
            self._open.popitem(last=False)
        return entry

    # --- reading and deciding -------------------------------------------------------

    async def snapshot(self, ns: str, vote_id: str) -> Snapshot:
        """The record and every ballot at one revision (one etcd round trip). For an open
        vote read before, only what changed since is fetched: ballots are never deleted
        while their vote exists, so the earlier ones still stand."""
        key = self.record_key(ns, vote_id)
        prefix = self.ballots_prefix(ns, vote_id)
        cached = self._ballots.pop((ns, vote_id), None)
        ballots_since = rpc.RequestOp(
            request_range=rpc.RangeRequest(
                key=prefix,
                range_end=prefix_end(prefix),
                min_mod_revision=cached.revision + 1 if cached else 0,
            )
        )
        read_record = rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
        found = await self._etcd.txn(
            rpc.TxnRequest(
                # With the record unchanged since cached, only the new ballots are read.
                compare=[mod_is(key, cached.record_mod)] if cached else [],
                success=[ballots_since] if cached else [read_record, ballots_since],
                failure=[read_record, ballots_since],
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
                raise _not_found(vote_id)
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

    async def _settle_quietly(self, ns: str, vote_id: str) -> Snapshot | None:
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
            decided = await self._decide(ns, snap, verdict)
            if decided is not None:
                return decided
        raise BackendUnavailable(
            f"vote {vote_id!r} kept changing while being decided; try again",
            metadata={"vote_id": vote_id},
        )

    async def _decide(
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
        key = self.record_key(ns, vote.id)
        prefix = self.ballots_prefix(ns, vote.id)
        expires_ms = int((now + vote.spec.retention_seconds) * 1000)
        txn = rpc.TxnRequest(
            compare=[
                mod_is(key, snap.record_mod),
                rpc.Compare(
                    key=prefix,
                    range_end=prefix_end(prefix),
                    target=rpc.Compare.MOD,
                    result=rpc.Compare.LESS,
                    mod_revision=snap.revision + 1,
                ),
            ],
            success=[
                put_op(key, record.SerializeToString()),
                rpc.RequestOp(
                    request_delete_range=rpc.DeleteRangeRequest(
                        key=self.timer_key(
                            vote.spec.deadline.ToMilliseconds(), "close", ns, vote.id
                        )
                    )
                ),
                put_op(self.timer_key(expires_ms, "expire", ns, vote.id), b""),
            ],
        )
        done = await self._etcd.txn(txn, retry=True)
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

    # --- get, list, cancel --------------------------------------------------------

    async def get(self, vote_id: str) -> Snapshot:
        require(vote_spec.check_vote_id("vote_id", vote_id))
        return await self.settle(calls.current.get().namespace, vote_id)

    async def list_votes(
        self, status: votes_pb2.VoteStatus.ValueType, limit: int, after: str
    ) -> tuple[int, list[votes_pb2.Vote], bool]:
        violations = vote_spec.check_vote_id("after", after, allow_empty=True)
        if not 0 <= limit <= MAX_LIST_LIMIT:
            violations.append(FieldViolation("limit", f"must be 0-{MAX_LIST_LIMIT}"))
        if status not in votes_pb2.VoteStatus.values():
            violations.append(FieldViolation("status", f"unknown status {status}"))
        require(violations)
        limit = limit or DEFAULT_LIST_LIMIT
        prefix = self.records_prefix(calls.current.get().namespace)
        start = prefix + after.encode() + b"\x00" if after else prefix
        out: list[votes_pb2.Vote] = []
        revision = 0
        while True:
            found = await self._etcd.range(
                rpc.RangeRequest(
                    key=start,
                    range_end=prefix_end(prefix),
                    limit=MAX_LIST_LIMIT,
                    revision=revision,
                )
            )
            revision = revision or int(found.header.revision)
            for raw in found.kvs:
                vote = parse_record(raw)
                if status and vote.status != status:
                    continue
                if len(out) == limit:
                    return revision, out, True
                out.append(vote)
            if not found.more:
                return revision, out, False
            start = found.kvs[-1].key + b"\x00"

    async def cancel(
        self, vote_id: str, reason: str, request_id: str
    ) -> tuple[int, votes_pb2.Decision]:
        """Close the vote as CANCELLED. Naturally idempotent: cancelling a vote this agent
        already cancelled answers with that decision."""
        call = calls.current.get()
        ns, agent = call.namespace, call.agent_id
        violations = vote_spec.check_vote_id("vote_id", vote_id)
        violations += check_request_id("request_id", request_id)
        if len(reason.encode()) > vote_spec.MAX_REASON_BYTES:
            violations.append(
                FieldViolation("reason", f"exceeds {vote_spec.MAX_REASON_BYTES} bytes")
            )
        require(violations)
        for _ in range(DECIDE_ATTEMPTS):
            snap = await self.snapshot(ns, vote_id)
            vote = snap.vote
            if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
                decision = vote.decision
                if (
                    decision.outcome == votes_pb2.OUTCOME_CANCELLED
                    and decision.cancelled_by == agent
                ):
                    return snap.revision, decision
                raise _closed(vote)
            if agent != vote.proposed_by.agent_id and agent not in self._admins:
                raise NotPermitted(
                    f"only the proposer ({vote.proposed_by.agent_id!r}) or an admin agent may "
                    f"cancel vote {vote_id!r}",
                    metadata={"vote_id": vote_id, "proposer": vote.proposed_by.agent_id},
                )
            count = vote_rules.tally(vote, snap.ballots, snap.weights)
            verdict = vote_rules.Verdict(
                votes_pb2.OUTCOME_CANCELLED,
                "",
                votes_pb2.DECIDED_BY_CANCEL,
                False,
                f"CANCELLED by {agent}"
                + (f": {reason}" if reason else "")
                + f". {count.participated} of {count.electorate_size} voters had cast a ballot.",
            )
            decided = await self._decide(ns, snap, verdict, cancelled_by=agent, reason=reason)
            if decided is not None:
                return decided.revision, decided.vote.decision
        raise BackendUnavailable(f"vote {vote_id!r} kept changing while being cancelled")

    # --- timers -------------------------------------------------------------------

    async def close_due(self, ns: str, vote_id: str, timer: bytes, due: float) -> bool:
        """A close timer fired: decide the vote (any replica may; one decision results).
        False: not due yet by this record, try later."""
        try:
            snap = await self.settle(ns, vote_id)
        except NotFound:
            await self._etcd.txn(_delete(timer), retry=True)
            return True
        if snap.vote.status == votes_pb2.VOTE_STATUS_OPEN:
            if abs(vote_spec.deadline_of(snap.vote) - due) > 1:  # an earlier vote's timer
                await self._etcd.txn(_delete(timer), retry=True)
                return True
            return False
        # Normally deleted with the decision; one left behind (the vote decided on
        # another replica meanwhile, or an earlier vote of that id) is stale.
        await self._etcd.txn(_delete(timer), retry=True)
        return True

    async def expire_due(self, ns: str, vote_id: str, timer: bytes, due: float) -> bool:
        """A retention timer fired: delete the decided vote and its ballots. False: not
        due yet by the record (this replica's clock runs ahead), try later."""
        key = self.record_key(ns, vote_id)
        found = await self._etcd.range(rpc.RangeRequest(key=key))
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=timer))]
        compares = []
        if found.kvs:
            vote = parse_record(found.kvs[0])
            expires = vote.decision.decided_at.ToMilliseconds() / 1000 + vote.spec.retention_seconds
            mine = vote.status == votes_pb2.VOTE_STATUS_DECIDED and abs(expires - due) <= 2
            if mine and expires > time.time():
                return False
            if mine:
                prefix = self.ballots_prefix(ns, vote_id)
                compares.append(mod_is(key, found.kvs[0].mod_revision))
                ops += [
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)),
                    rpc.RequestOp(
                        request_delete_range=rpc.DeleteRangeRequest(
                            key=prefix, range_end=prefix_end(prefix)
                        )
                    ),
                ]
                _log.info("vote expired", vote_id=vote_id, namespace=ns)
        # Without its record (or with a later vote's), the timer alone is stale.
        await self._etcd.txn(rpc.TxnRequest(compare=compares, success=ops), retry=True)
        return True


# --- helpers -----------------------------------------------------------------------


def _derived_id(agent: str, request_id: str) -> str:
    """A retried proposal (same agent and request_id) names the same vote; without a
    request_id, a fresh id that sorts by time."""
    if request_id:
        return hashlib.sha256(f"{agent}\x00{request_id}".encode()).hexdigest()[:24]
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def _same_proposal(
    stored: votes_pb2.VoteSpec, normal: votes_pb2.VoteSpec, given: votes_pb2.VoteSpec
) -> bool:
    a, b = votes_pb2.VoteSpec(), votes_pb2.VoteSpec()
    a.CopyFrom(stored)
    b.CopyFrom(normal)
    if not given.HasField("deadline"):  # a relative deadline moves with each retry
        a.ClearField("deadline")
        b.ClearField("deadline")
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def _ballot_words(ballot: votes_pb2.Ballot) -> str:
    if ballot.veto:
        return "a veto"
    if ballot.abstain:
        return "to abstain"
    return repr(ballot.choice) if ballot.choice else "to not veto"


def parse_record(raw: Any) -> votes_pb2.Vote:
    vote = votes_pb2.Vote.FromString(raw.value)
    vote.created_revision = raw.create_revision
    if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
        vote.decision.revision = raw.mod_revision
    return vote


def _closed(vote: votes_pb2.Vote) -> VoteClosed:
    if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
        decision = vote.decision
        outcome = vote_rules.OUTCOME_NAMES[decision.outcome]
        return VoteClosed(
            f"vote {vote.id!r} is closed: it was decided {outcome} at revision "
            f"{decision.revision}. {clip(decision.explanation, 1000)}",
            details=[_brief_decision(decision)],
            metadata={"vote_id": vote.id, "outcome": outcome},
        )
    return VoteClosed(
        f"vote {vote.id!r} is past its deadline and is being closed; no more ballots",
        metadata={"vote_id": vote.id},
    )


def _brief_decision(decision: votes_pb2.Decision) -> votes_pb2.Decision:
    """The decision as an error detail: whole unless large (a tally of many long options)."""
    if decision.ByteSize() <= 4096:
        return decision
    brief = votes_pb2.Decision()
    brief.CopyFrom(decision)
    brief.ClearField("tally")
    brief.explanation = clip(brief.explanation, 1000)
    return brief


def _brief_ballot(ballot: votes_pb2.Ballot) -> votes_pb2.Ballot:
    brief = votes_pb2.Ballot()
    brief.CopyFrom(ballot)
    brief.ClearField("replaced")
    brief.rationale = clip(brief.rationale, 1000)
    return brief


def _not_found(vote_id: str) -> NotFound:
    ns = calls.current.get().namespace
    return NotFound(
        f"vote {vote_id!r} does not exist in namespace {ns!r} (never proposed, or deleted "
        "after its retention)",
        metadata={"vote_id": vote_id},
    )


def _delete(key: bytes) -> Any:
    return rpc.TxnRequest(
        success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))]
    )
