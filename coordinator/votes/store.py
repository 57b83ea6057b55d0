"""Quorum votes: proposals, ballots and exactly-once decisions, all in etcd.

Layout (keyspace.py): the vote record, one key per voter's ballot, and timers every
replica follows (timers.py) for deadlines and retention.

Guarantees:
- A ballot is stored by a Txn that checks the vote is still open (its record unchanged
  since creation), the voter's previous ballot, the caller's fence and its request_id.
- A decision counts exactly the ballots accepted before it (decisions.py).
- Outcomes are pure functions of the record and its ballots (rules.py); the only clock
  is the deadline, compared by whichever replica closes the vote.

Error handling: bad input is INVALID_ARGUMENT and stores nothing; a voter outside the
electorate is NOT_ELIGIBLE; a second, different ballot where changes are not allowed is
ALREADY_VOTED (with the standing ballot); a ballot after the decision is VOTE_CLOSED
(with the decision); cancelling someone else's vote is NOT_PERMITTED. A retried ballot
(same request_id) gets its first answer, and casting the identical ballot again is a
success.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from accord.coordinator import logs
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.fencing import Fencing
from accord.coordinator.substrate import Substrate, audit, calls, clock, failpoints
from accord.coordinator.substrate.errors import (
    AlreadyVoted,
    BackendUnavailable,
    ConditionFailed,
    FieldViolation,
    InvalidArgument,
    NotEligible,
    NotPermitted,
    RequestIdReused,
    VoteClosed,
    clip,
    invalid,
    require,
)
from accord.coordinator.substrate.group_commit import Committed
from accord.coordinator.substrate.idempotency import Prior
from accord.coordinator.substrate.limits import check_request_id
from accord.coordinator.substrate.pages import parse_snapshot_token, snapshot_token
from accord.coordinator.substrate.txn import (
    Response,
    Txn,
    absent,
    get,
    get_prefix,
    mod_is,
    nested,
    none_changed_since,
    put,
    read,
    txn,
)
from accord.coordinator.votes import pages as vote_pages
from accord.coordinator.votes import rules as vote_rules
from accord.coordinator.votes import spec as vote_spec
from accord.coordinator.votes.decisions import (
    DECIDE_ATTEMPTS,
    SKIP_OPEN_CHECK,
    Decisions,
    Decisive,
)
from accord.coordinator.votes.electorate import GrantedLabels, label_voters
from accord.coordinator.votes.listing import VoteListing
from accord.coordinator.votes.model import (
    Snapshot,
    ballot_words,
    brief_ballot,
    cast_digest,
    closed,
    derived_id,
    not_found,
    parse_record,
    same_proposal,
)
from accord.coordinator.votes.replays import replay_cast
from accord.v1 import common_pb2, votes_pb2

_log = logs.get("accord.votes")
_ACK_UNWRITTEN = failpoints.broken("votes.ack_unwritten")


class VoteStore:
    def __init__(
        self,
        substrate: Substrate,
        leases: LeaseStore,
        fencing: Fencing,
        *,
        admin_agents: Sequence[str] = ("admin",),
        granted_labels: GrantedLabels | None = None,
    ) -> None:
        """granted_labels: with auth required, the lease labels (and weights) an admin
        granted a principal in a namespace; a label electorate counts only principals
        holding them, at the weight granted (electorate.py)."""
        self._granted_labels = granted_labels
        self._s = substrate
        self._etcd = substrate.etcd
        self._keys = substrate.keys
        self._leases = leases
        self._fencing = fencing
        self._admins = frozenset(admin_agents)
        self.decisions = Decisions(substrate)
        self.listing = VoteListing(substrate)

    # --- propose ------------------------------------------------------------------

    async def propose(
        self, vote_id: str, spec: votes_pb2.VoteSpec, request_id: str
    ) -> tuple[int, votes_pb2.Vote, bool]:
        """The vote proposed, and whether it was proposed before (a retry)."""
        call = calls.current.get()
        now = clock.now()
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
            vote_id = derived_id(call.agent_id, request_id)
        vote = votes_pb2.Vote(
            id=vote_id,
            spec=normal,
            voters=sorted(voters, key=lambda v: v.agent_id),
            proposed_by=common_pb2.Provenance(
                agent_id=call.agent_id,
                written_at=vote_spec.timestamp(now),
                request_id=request_id,
                principal=call.principal,
            ),
            status=votes_pb2.VOTE_STATUS_OPEN,
        )
        key = self._keys.vote(call.namespace, vote_id)
        closes = self._keys.vote_timer(
            normal.deadline.ToMilliseconds(), "close", call.namespace, vote_id
        )
        proposal = txn(
            when=[absent(key)],
            then=[put(key, vote.SerializeToString()), put(closes, b"")],
            otherwise=[get(key)],
        )
        # Safe to resend: a resent proposal finds its own record and answers with it.
        done = await self._etcd.txn(proposal, retry=True)
        if done.succeeded:
            vote.created_revision = done.header.revision
            self.decisions.remember_open(call.namespace, vote, proposed=True)
            return int(done.header.revision), vote, False
        raw = done.responses[0].response_range.kvs[0]
        existing = parse_record(raw)
        if not same_proposal(existing.spec, normal, spec):
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
        return int(done.header.revision), existing, True

    async def _by_labels(self, selector: dict[str, str]) -> list[votes_pb2.Voter]:
        namespace = calls.current.get().namespace
        leases = await self._leases.records()
        voters = label_voters(leases, selector, namespace, self._granted_labels)
        if not voters:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "spec.electorate.lease_labels",
                        "no live lease of an identified agent carries labels "
                        + clip(str(selector), 200),
                    )
                ]
            )
        return voters

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
    ) -> tuple[int, votes_pb2.Ballot, Snapshot | None, bool]:
        """Store the caller's ballot. Returns its revision, the ballot, the vote as it
        stands after it (None if that could not be read), and whether this was a retry
        of a request_id already answered."""
        call = calls.current.get()
        ns, agent = call.namespace, call.agent_id
        require(
            vote_spec.check_vote_id("vote_id", vote_id) + check_request_id("request_id", request_id)
        )
        digest = cast_digest(vote_id, choice, abstain, veto, rationale, confidence, fence)
        try:
            vote, weights = await self.decisions.open_record(ns, vote_id)
        except VoteClosed as refusal:
            return await self._first_answer(ns, vote_id, request_id, digest, refusal)
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
        if clock.now() >= vote_spec.deadline_of(vote):
            late = closed((await self.decisions.settle(ns, vote_id)).vote)
            return await self._first_answer(ns, vote_id, request_id, digest, late)
        ballot = votes_pb2.Ballot(
            voter=agent,
            choice=choice,
            abstain=abstain,
            veto=veto,
            rationale=rationale,
            confidence=confidence,
            weight=weight or 0.0,
            cast_at=vote_spec.timestamp(clock.now()),
            request_id=request_id,
        )
        key = self._keys.ballot(ns, vote_id, agent)
        build, stored, expected_mod, decisive = await self._ballot_txn(ns, vote, ballot, key, fence)
        after: Snapshot | None = None  # the vote after the ballot, when its Txn told

        async def act(committed: Committed) -> tuple[int, votes_pb2.Ballot, bool]:
            nonlocal after
            if committed.response.succeeded:
                failpoints.hit("votes.cast.after_commit")
                stored.revision = committed.revision
                if decisive is not None:  # did the ballot's Txn store the decision too?
                    decided = committed.response.responses[1].response_txn
                    if decided.succeeded:
                        after = self.decisions.decided_with(ns, decisive, committed.revision)
                    else:  # other ballots came first: it read them instead
                        new = decided.responses[0].response_range.kvs
                        after = self.decisions.absorb(ns, decisive, committed.revision, new)
                return committed.revision, stored, False
            # The same ballot stored before (a retry without request_id) is a success.
            existing = await self._refused(vote, committed.response, ballot, expected_mod, fence)
            return existing.revision, existing, True

        async def replay(prior: Prior) -> tuple[int, votes_pb2.Ballot, bool]:
            return await replay_cast(self._etcd, vote_id, key, prior)

        revision, cast, replayed = await self._s.writes.apply(
            build,
            request_id=request_id,
            digest=digest,
            act=act,
            replay=replay,
            # A ballot that cannot change is rebuilt on retry from its key (replays.py):
            # one etcd write. Otherwise (or when answered with an earlier identical
            # ballot, under a record saying "refused") the answer is stored too.
            answer=lambda done: (
                None
                if not (vote.spec.allow_change or done[2])
                else votes_pb2.CastResponse(
                    header=common_pb2.ResponseHeader(revision=done[0]), ballot=done[1]
                )
            ),
            # The record changes only in direct txns: ballots on one vote share batches.
            stable=[self._keys.vote(ns, vote_id)],
            # A ballot storing the decision too must not share a batch with another ballot
            # of its vote: a batch evaluates every compare before any write.
            batched=decisive is None,
        )
        if after is None or replayed:
            return revision, cast, await self.decisions.settle_quietly(ns, vote_id), replayed
        if after.vote.status == votes_pb2.VOTE_STATUS_DECIDED:
            return revision, cast, after, replayed
        return revision, cast, await self.decisions.settle_known(ns, after), replayed

    async def _ballot_txn(
        self,
        ns: str,
        vote: votes_pb2.Vote,
        ballot: votes_pb2.Ballot,
        key: bytes,
        fence: common_pb2.Fence | None,
    ) -> tuple[Callable[[int], Txn], votes_pb2.Ballot, int, Decisive | None]:
        """What builds the Txn storing ballot while the vote is open, the voter's previous
        ballot is the one seen (none, unless changes are allowed) and the fence holds; the
        ballot as stored (with what it replaces), the previous ballot's mod revision (0:
        none), and whether it decides the vote by this replica's last read of it.

        A deciding ballot's Txn also writes the decision, in a nested Txn guarded by "no
        other ballot since that read", whose other branch reads the ballots since then: the
        decision reaches watchers with the ballot, in one etcd round trip, and a ballot
        that turned out not to decide still needs no read to settle."""
        record = self._keys.vote(ns, vote.id)
        stored = votes_pb2.Ballot()
        stored.CopyFrom(ballot)
        previous_is = absent(key)
        expected_mod = 0
        if vote.spec.allow_change:
            found = await self._etcd.range(read(key))
            if found.kvs:
                previous = votes_pb2.Ballot.FromString(found.kvs[0].value)
                history = list(previous.replaced)
                previous.ClearField("replaced")
                previous.revision = found.kvs[0].mod_revision
                stored.replaced.extend([*history, previous])
                expected_mod = found.kvs[0].mod_revision
                previous_is = mod_is(key, expected_mod)
        guard = await self._fencing.guard([fence] if fence is not None else [], field="fence")
        when = [
            mod_is(record, vote.created_revision),  # still open: unchanged since proposed
            previous_is,
            *guard.compares,
        ]
        if SKIP_OPEN_CHECK:  # a deliberate bug (tests only): a closed vote takes ballots
            when = when[1:]
        # A deliberate bug (tests only): the ballot is acknowledged but never written.
        then = [] if _ACK_UNWRITTEN else [put(key, stored.SerializeToString())]
        otherwise = [get(record), get(key)]  # to say why not
        decisive = self.decisions.decisive(ns, vote.id, stored)
        if decisive is not None:
            prefix = self._keys.ballots_prefix(ns, vote.id)
            decide = txn(
                # Checked before the ballot is written: no other ballot since the read.
                when=[none_changed_since(prefix, decisive.revision)],
                then=decisive.ops,
                otherwise=[get_prefix(prefix, min_mod_revision=decisive.revision + 1)],
            )
            then.append(nested(decide))

        def build(_: int) -> Txn:  # a fresh Txn for each attempt: the record is added to it
            return txn(when=when, then=then, otherwise=otherwise)

        return build, stored, expected_mod, decisive

    async def _refused(
        self,
        vote: votes_pb2.Vote,
        response: Response,
        ballot: votes_pb2.Ballot,
        expected_mod: int,
        fence: common_pb2.Fence | None,
    ) -> votes_pb2.Ballot:
        """Why a ballot's Txn did not apply, raised; or the identical ballot already
        stored (returned: casting it again is not an error)."""
        records = response.responses[0].response_range.kvs
        if not records:
            raise not_found(vote.id)
        if records[0].mod_revision != vote.created_revision:
            current = parse_record(records[0])
            if current.status != votes_pb2.VOTE_STATUS_DECIDED:
                raise not_found(vote.id)  # deleted and proposed again meanwhile
            raise closed(current)
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
                f"agent {ballot.voter!r} already voted {ballot_words(existing)} at revision "
                f"{existing.revision}, and this vote does not allow changing a ballot",
                details=[brief_ballot(existing)],
                metadata={"vote_id": vote.id, "revision": str(existing.revision)},
            )
        if fence is not None:
            raise await self._fencing.fenced(fence)
        raise ConditionFailed("the ballot could not be stored; cast it again")

    async def _first_answer(
        self, ns: str, vote_id: str, request_id: str, digest: bytes, refusal: VoteClosed
    ) -> tuple[int, votes_pb2.Ballot, Snapshot | None, bool]:
        """The vote is closed: refusal, unless this is a retry of a ballot stored before
        (the one that closed it, say), which gets its first answer."""
        first = await self._s.writes.prior(request_id, digest)
        if first is None:
            raise refusal
        agent = calls.current.get().agent_id
        key = self._keys.ballot(ns, vote_id, agent)
        revision, cast, _ = await replay_cast(self._etcd, vote_id, key, first)
        return revision, cast, await self.decisions.settle_quietly(ns, vote_id), True

    # --- get, cancel ------------------------------------------------------------

    async def get(self, vote_id: str, page_token: str) -> tuple[int, votes_pb2.Vote, str]:
        """The vote at one revision (settled first on a first page) with one page of its
        ballots, and the next page's token ("" on the last)."""
        require(vote_spec.check_vote_id("vote_id", vote_id))
        revision, offset = parse_snapshot_token(page_token)
        ns = calls.current.get().namespace
        if revision:
            try:
                snap = await self.decisions.snapshot_at(ns, vote_id, revision)
            except InvalidArgument:  # a revision etcd has not reached: never issued
                raise invalid("page_token", "is not a token this service issued") from None
        else:
            snap = await self.decisions.settle(ns, vote_id)
        vote, end = vote_pages.page(snap.full(), offset)
        return snap.revision, vote, snapshot_token(snap.revision, end)

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
            snap = await self.decisions.snapshot(ns, vote_id)
            vote = snap.vote
            if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
                decision = vote.decision
                if (
                    decision.outcome == votes_pb2.OUTCOME_CANCELLED
                    and decision.cancelled_by == agent
                ):
                    return snap.revision, decision
                raise closed(vote)
            if (
                agent != vote.proposed_by.agent_id
                and agent not in self._admins
                and not call.namespace_admin
            ):
                raise NotPermitted(
                    f"only the proposer ({vote.proposed_by.agent_id!r}) or an admin agent may "
                    f"cancel vote {vote_id!r}",
                    metadata={"vote_id": vote_id, "proposer": vote.proposed_by.agent_id},
                )
            tally = vote_rules.tally(vote, snap.ballots, snap.weights)
            verdict = vote_rules.Verdict(
                votes_pb2.OUTCOME_CANCELLED,
                "",
                votes_pb2.DECIDED_BY_CANCEL,
                False,
                f"CANCELLED by {agent}"
                + (f": {reason}" if reason else "")
                + f". {tally.participated} of {tally.electorate_size} voters had cast a ballot.",
            )
            decided = await self.decisions.decide(
                ns, snap, verdict, cancelled_by=agent, reason=reason
            )
            if decided is not None:
                proposer = vote.proposed_by
                if audit.on_behalf(proposer.principal) and agent != proposer.agent_id:
                    what = f"proposed by {proposer.agent_id}" + (f": {reason}" if reason else "")
                    logged = audit.entry("CancelVote", vote_id, what)
                    await audit.record(self._s.writes, self._s.keys, logged)
                return decided.revision, decided.vote.decision
        raise BackendUnavailable(f"vote {vote_id!r} kept changing while being cancelled")
