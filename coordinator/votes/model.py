"""A vote as etcd holds it, and how it is explained: pure, no I/O."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import NamedTuple

from accord.coordinator.substrate import calls, clock
from accord.coordinator.substrate.errors import NotFound, VoteClosed, clip
from accord.coordinator.substrate.idempotency import fingerprint
from accord.coordinator.substrate.txn import KeyValue
from accord.coordinator.votes import rules as vote_rules
from accord.coordinator.votes.pages import in_order
from accord.v1 import common_pb2, votes_pb2


@dataclass(slots=True)
class Snapshot:
    """A vote and its ballots as etcd held them at one revision."""

    revision: int
    vote: votes_pb2.Vote  # the record: no ballots, no tally
    record_mod: int
    ballots: list[votes_pb2.Ballot]
    weights: vote_rules.Weights | None = None  # of vote.voters, when already computed
    # The ballots' sums, for an open vote whose ballots cannot change: settling from them
    # costs O(1) however many ballots there are.
    count: vote_rules.Count | None = None

    def full(self) -> votes_pb2.Vote:
        """The vote with every ballot (in page order) and its tally, as Get and Watch
        show it before paging its ballots (pages.py)."""
        out = votes_pb2.Vote()
        out.CopyFrom(self.vote)
        out.ballots.extend(in_order(self.ballots))
        if out.status == votes_pb2.VOTE_STATUS_DECIDED:
            out.tally.CopyFrom(out.decision.tally)
        else:
            out.tally.CopyFrom(vote_rules.tally(self.vote, self.ballots, self.weights))
        return out


class OpenVote(NamedTuple):
    """An open vote's record and its voters' weights."""

    vote: votes_pb2.Vote
    weights: dict[str, float]


def derived_id(agent: str, request_id: str) -> str:
    """A retried proposal (same agent and request_id) names the same vote; without a
    request_id, a fresh id that sorts by time."""
    if request_id:
        return hashlib.sha256(f"{agent}\x00{request_id}".encode()).hexdigest()[:24]
    return f"{int(clock.now() * 1000):012x}{secrets.token_hex(6)}"


def same_proposal(
    stored: votes_pb2.VoteSpec, normal: votes_pb2.VoteSpec, given: votes_pb2.VoteSpec
) -> bool:
    a, b = votes_pb2.VoteSpec(), votes_pb2.VoteSpec()
    a.CopyFrom(stored)
    b.CopyFrom(normal)
    if not given.HasField("deadline"):  # a relative deadline moves with each retry
        a.ClearField("deadline")
        b.ClearField("deadline")
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def cast_digest(
    vote_id: str,
    choice: str,
    abstain: bool,
    veto: bool,
    rationale: str,
    confidence: float,
    fence: common_pb2.Fence | None,
) -> bytes:
    """What a Cast's request_id stands for: a retry must cast the same ballot."""
    return fingerprint(
        b"vote-cast",
        vote_id.encode(),
        choice.encode(),
        bytes([abstain, veto]),
        rationale.encode(),
        repr(confidence).encode(),
        fence.SerializeToString(deterministic=True) if fence is not None else b"",
    )


def ballot_words(ballot: votes_pb2.Ballot) -> str:
    if ballot.veto:
        return "a veto"
    if ballot.abstain:
        return "to abstain"
    return repr(ballot.choice) if ballot.choice else "to not veto"


# A decision stored by the decisive ballot's own transaction counts that ballot, whose
# revision is the record's own: unknown when the record is written, so stored as this.
DECIDING_BALLOT = -1


def parse_record(raw: KeyValue) -> votes_pb2.Vote:
    vote = votes_pb2.Vote.FromString(raw.value)
    vote.created_revision = raw.create_revision
    if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
        vote.decision.revision = raw.mod_revision
        if vote.decision.last_ballot_revision == DECIDING_BALLOT:
            vote.decision.last_ballot_revision = raw.mod_revision
    return vote


def closed(vote: votes_pb2.Vote) -> VoteClosed:
    if vote.status == votes_pb2.VOTE_STATUS_DECIDED:
        decision = vote.decision
        outcome = vote_rules.OUTCOME_NAMES[decision.outcome]
        return VoteClosed(
            f"vote {vote.id!r} is closed: it was decided {outcome} at revision "
            f"{decision.revision}. {clip(decision.explanation, 1000)}",
            details=[brief_decision(decision)],
            metadata={"vote_id": vote.id, "outcome": outcome},
        )
    return VoteClosed(
        f"vote {vote.id!r} is past its deadline and is being closed; no more ballots",
        metadata={"vote_id": vote.id},
    )


def brief_decision(decision: votes_pb2.Decision) -> votes_pb2.Decision:
    """The decision as an error detail: whole unless large (a tally of many long options)."""
    if decision.ByteSize() <= 4096:
        return decision
    brief = votes_pb2.Decision()
    brief.CopyFrom(decision)
    brief.ClearField("tally")
    brief.explanation = clip(brief.explanation, 1000)
    return brief


def brief_ballot(ballot: votes_pb2.Ballot) -> votes_pb2.Ballot:
    brief = votes_pb2.Ballot()
    brief.CopyFrom(ballot)
    brief.ClearField("replaced")
    brief.rationale = clip(brief.rationale, 1000)
    return brief


def not_found(vote_id: str) -> NotFound:
    ns = calls.current.get().namespace
    return NotFound(
        f"vote {vote_id!r} does not exist in namespace {ns!r} (never proposed, or deleted "
        "after its retention)",
        metadata={"vote_id": vote_id},
    )
