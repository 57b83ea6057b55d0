"""What the façade hands an agent about votes, sessions and locks: plain JSON-able models,
shared by the tools (their structured output) and the resources (their JSON text), so a
vote read as a resource and a vote returned by accord_votes_get look the same.

Enums travel by name ("APPROVED", "OPEN"), times as ISO 8601 UTC strings, weights as
numbers. A vote always carries an `explanation`: the decision's own once decided, else a
sentence on where the vote stands and what would settle it.

Error handling: nothing here calls Accord or raises on what the service sent; a field the
service left unset renders as its empty value.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from accord.client import Presence, Rule, SessionState
from accord.v1 import common_pb2, locks_pb2, votes_pb2


def iso(ts: Timestamp, present: bool = True) -> str | None:
    """A protobuf timestamp as ISO 8601 UTC (None when unset)."""
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat()


def enum_name(value: int, names: Any, prefix: str) -> str:
    return str(names.Name(value)).removeprefix(prefix) if value else "UNSPECIFIED"


# --- provenance ------------------------------------------------------------------------


class ProvenanceView(BaseModel):
    """Who made a write: the agent, its authenticated principal, when, and the W3C trace
    context of the call (empty when it sent none)."""

    agent_id: str
    principal: str = ""
    at: str | None = None
    traceparent: str = ""


def provenance(msg: common_pb2.Provenance) -> ProvenanceView:
    return ProvenanceView(
        agent_id=msg.agent_id,
        principal=msg.principal,
        at=iso(msg.written_at, msg.HasField("written_at")),
        traceparent=msg.trace_context.traceparent,
    )


# --- votes -----------------------------------------------------------------------------


class BallotView(BaseModel):
    voter: str
    choice: str = ""
    abstain: bool = False
    veto: bool = False
    rationale: str = ""
    confidence: float = 0.0
    weight: float = 0.0
    cast_at: str | None = None
    revision: int = 0


class OptionTallyView(BaseModel):
    option: str
    voters: int
    weight: float


class TallyView(BaseModel):
    options: list[OptionTallyView]
    abstained: int
    participated: int
    participated_weight: float
    electorate_size: int
    electorate_weight: float
    vetoed_by: list[str]


class DecisionView(BaseModel):
    outcome: str = Field(
        description="APPROVED, REJECTED, VETOED, NO_QUORUM, TIED, ESCALATED or CANCELLED"
    )
    option: str = Field("", description="The winning option when APPROVED")
    decided_by: str = Field(description="CERTAINTY, ALL_CAST, DEADLINE or CANCEL")
    quorum_met: bool
    explanation: str
    decided_at: str | None = None
    revision: int = 0
    cancelled_by: str = ""
    cancel_reason: str = ""
    traceparent: str = Field(
        "",
        description="The deciding call's W3C traceparent ('': none sent, or the deadline decided)",
    )


class VoterView(BaseModel):
    agent_id: str
    weight: float


class VoteView(BaseModel):
    id: str
    question: str
    options: list[str]
    status: str = Field(description="OPEN or DECIDED")
    rule: str = Field(description="The rule in words")
    voters: list[VoterView]
    veto_holders: list[str]
    quorum_voters: int = 0
    quorum_weight: float = 0.0
    deadline: str | None = None
    allow_abstain: bool = False
    allow_change: bool = False
    proposed_by: ProvenanceView
    created_revision: int
    tally: TallyView
    ballots: list[BallotView]
    decision: DecisionView | None = None
    explanation: str = Field(
        description="The decision's explanation once decided; else where the vote stands"
    )


def ballot(msg: votes_pb2.Ballot) -> BallotView:
    return BallotView(
        voter=msg.voter,
        choice=msg.choice,
        abstain=msg.abstain,
        veto=msg.veto,
        rationale=msg.rationale,
        confidence=msg.confidence,
        weight=msg.weight,
        cast_at=iso(msg.cast_at, msg.HasField("cast_at")),
        revision=msg.revision,
    )


def tally(msg: votes_pb2.Tally) -> TallyView:
    return TallyView(
        options=[
            OptionTallyView(option=o.option, voters=o.voters, weight=o.weight) for o in msg.options
        ],
        abstained=msg.abstained,
        participated=msg.participated,
        participated_weight=msg.participated_weight,
        electorate_size=msg.electorate_size,
        electorate_weight=msg.electorate_weight,
        vetoed_by=list(msg.vetoed_by),
    )


def decision(msg: votes_pb2.Decision) -> DecisionView:
    return DecisionView(
        outcome=enum_name(msg.outcome, votes_pb2.Outcome, "OUTCOME_"),
        option=msg.option,
        decided_by=enum_name(msg.decided_by, votes_pb2.DecidedBy, "DECIDED_BY_"),
        quorum_met=msg.quorum_met,
        explanation=msg.explanation,
        decided_at=iso(msg.decided_at, msg.HasField("decided_at")),
        revision=msg.revision,
        cancelled_by=msg.cancelled_by,
        cancel_reason=msg.cancel_reason,
        traceparent=msg.trace_context.traceparent,
    )


def _standing(msg: votes_pb2.Vote, rule: str) -> str:
    """Where an open vote stands, for an agent deciding whether to wait or to act."""
    t = msg.tally
    leading = sorted(t.options, key=lambda o: (-o.weight, o.option))
    lead = (
        f"; leading: {leading[0].option!r} with weight {leading[0].weight:g}"
        if leading and leading[0].weight > 0
        else ""
    )
    closes = iso(msg.spec.deadline, msg.spec.HasField("deadline"))
    electorate = t.electorate_size or len(msg.voters)  # Propose answers without a tally
    return (
        f"Open: {t.participated} of {electorate} voters have cast a ballot{lead}. "
        f"An option wins with {rule}. It is decided as soon as the missing ballots cannot "
        f"change the outcome" + (f", or at its deadline {closes}." if closes else ".")
    )


def vote(msg: votes_pb2.Vote) -> VoteView:
    spec = msg.spec
    rule = Rule.from_proto(spec.rule).describe(len(msg.voters) or None)
    decided = msg.HasField("decision")
    return VoteView(
        id=msg.id,
        question=spec.question,
        options=list(spec.options),
        status=enum_name(msg.status, votes_pb2.VoteStatus, "VOTE_STATUS_"),
        rule=rule,
        voters=[VoterView(agent_id=v.agent_id, weight=v.weight) for v in msg.voters],
        veto_holders=list(spec.veto_holders),
        quorum_voters=spec.quorum.min_voters,
        quorum_weight=spec.quorum.min_weight,
        deadline=iso(spec.deadline, spec.HasField("deadline")),
        allow_abstain=spec.allow_abstain,
        allow_change=spec.allow_change,
        proposed_by=provenance(msg.proposed_by),
        created_revision=msg.created_revision,
        tally=tally(msg.decision.tally if decided else msg.tally),
        ballots=[ballot(b) for b in msg.ballots],
        decision=decision(msg.decision) if decided else None,
        explanation=msg.decision.explanation if decided else _standing(msg, rule),
    )


# --- sessions --------------------------------------------------------------------------


class PresenceView(BaseModel):
    agent_id: str
    client_id: int
    lease_id: int
    state: dict[str, Any]
    updated_at: str | None = None


class SessionView(BaseModel):
    name: str
    revision: int = Field(description="The etcd revision this view was read at")
    document: dict[str, Any] = Field(
        description="One member per root type: maps as objects, text as strings, arrays as lists"
    )
    roots: dict[str, str] = Field(description="Each root type's kind: MAP, TEXT or ARRAY")
    created_revision: int
    created_by: ProvenanceView
    presence: list[PresenceView]


def _kind(value: Any) -> str:
    """A root's kind, as its JSON view shows it."""
    return "MAP" if isinstance(value, dict) else "TEXT" if isinstance(value, str) else "ARRAY"


def presence(p: Presence) -> PresenceView:
    return PresenceView(
        agent_id=p.agent_id,
        client_id=p.client_id,
        lease_id=p.lease_id,
        state=p.state,
        updated_at=p.updated_at.isoformat() if p.updated_at else None,
    )


def session(state: SessionState) -> SessionView:
    info = state.info
    by = info.created_by
    return SessionView(
        name=info.name,
        revision=state.revision,
        document=state.json,
        roots={root: _kind(value) for root, value in state.json.items()},
        created_revision=info.created_revision,
        created_by=ProvenanceView(
            agent_id=by.agent_id,
            principal=by.principal,
            at=by.written_at.isoformat() if by.written_at else None,
            traceparent=by.trace_context.traceparent if by.trace_context else "",
        ),
        presence=[presence(p) for p in state.presence],
    )


# --- locks -----------------------------------------------------------------------------


class LockEntryView(BaseModel):
    agent_id: str
    lease_id: int
    mode: str = Field(description="EXCLUSIVE or SHARED")
    token: int = Field(description="The entry's fencing token (its etcd create revision)")
    since: str | None = None
    lease_ttl_seconds: int = 0


class LockView(BaseModel):
    name: str
    permits: int = Field(description="0 for a lock; the number of permits for a semaphore")
    holders: list[LockEntryView]
    waiters: list[LockEntryView] = Field(description="In queue order")


def lock_entry(msg: locks_pb2.LockEntry) -> LockEntryView:
    return LockEntryView(
        agent_id=msg.agent_id,
        lease_id=msg.lease_id,
        mode=enum_name(msg.mode or locks_pb2.LOCK_MODE_EXCLUSIVE, locks_pb2.LockMode, "LOCK_MODE_"),
        token=msg.token,
        since=iso(msg.since, msg.HasField("since")),
        lease_ttl_seconds=msg.lease_ttl_seconds,
    )


def lock(msg: locks_pb2.LockState) -> LockView:
    return LockView(
        name=msg.name,
        permits=msg.permits,
        holders=[lock_entry(e) for e in msg.holders],
        waiters=[lock_entry(e) for e in msg.waiters],
    )
