"""Quorum votes as an agent uses them: propose, cast, follow to the decision.

``vote = await accord.votes.propose("Ship it?", ["yes", "no"], voters=["a", "b", "c"],
voting_period=300)`` opens a vote; each voter calls
``await accord.votes.cast(vote.id, "yes")``; anyone can
``await accord.votes.wait(vote.id)`` for the Decision, whose `explanation` says which
rule fired and why. A vote is decided exactly once, by the server, as soon as
the missing ballots can no longer change the outcome or at its deadline.

Propose, cast and cancel carry a request_id the client makes up (or is given), re-sent
unchanged on retries, so a retried call never opens a second vote or casts twice. A
ballot cast with ``fence=grant`` is stored only while that lock grant holds: once the
lock is lost (lease expired, lock broken) it fails with FencedError and counts for
nothing. A watch that loses its replica resumes on another one without repeating a
ballot.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from accord.client import calls, deprecation
from accord.client.batching import CastBatches
from accord.client.errors import DeadlineExceededError, QuotaExceededError, UnavailableError
from accord.client.kv import _fence, _Fencing
from accord.client.retry import pushback
from accord.client.trace_context import TraceContext
from accord.client.transport import Transport
from accord.v1 import common_pb2, votes_pb2

# The contract's own messages (typed through their .pyi stubs).
Vote = votes_pb2.Vote
VoteSpec = votes_pb2.VoteSpec
Ballot = votes_pb2.Ballot
Decision = votes_pb2.Decision
Tally = votes_pb2.Tally


class RuleKind(IntEnum):
    MAJORITY = votes_pb2.RULE_KIND_MAJORITY
    FRACTION = votes_pb2.RULE_KIND_FRACTION
    K_OF_N = votes_pb2.RULE_KIND_K_OF_N
    UNANIMOUS = votes_pb2.RULE_KIND_UNANIMOUS
    WEIGHTED_THRESHOLD = votes_pb2.RULE_KIND_WEIGHTED_THRESHOLD


class TiePolicy(IntEnum):
    # A tie ends the vote as TIED: no decision.
    NO_DECISION = votes_pb2.TIE_POLICY_NO_DECISION
    # A tie ends the vote as ESCALATED: hand it to a human or a higher authority.
    ESCALATE = votes_pb2.TIE_POLICY_ESCALATE


class VoteStatus(IntEnum):
    OPEN = votes_pb2.VOTE_STATUS_OPEN
    DECIDED = votes_pb2.VOTE_STATUS_DECIDED


class Outcome(IntEnum):
    APPROVED = votes_pb2.OUTCOME_APPROVED
    REJECTED = votes_pb2.OUTCOME_REJECTED
    VETOED = votes_pb2.OUTCOME_VETOED
    NO_QUORUM = votes_pb2.OUTCOME_NO_QUORUM
    TIED = votes_pb2.OUTCOME_TIED
    ESCALATED = votes_pb2.OUTCOME_ESCALATED
    CANCELLED = votes_pb2.OUTCOME_CANCELLED


class DecidedBy(IntEnum):
    # The missing ballots could no longer change the outcome.
    CERTAINTY = votes_pb2.DECIDED_BY_CERTAINTY
    # Every voter and veto holder had cast a ballot.
    ALL_CAST = votes_pb2.DECIDED_BY_ALL_CAST
    DEADLINE = votes_pb2.DECIDED_BY_DEADLINE
    CANCEL = votes_pb2.DECIDED_BY_CANCEL


@dataclass(frozen=True, slots=True)
class Rule:
    """When an option wins. Build one with ``Rule.majority()``, ``Rule.fraction(2, 3)``,
    ``Rule.k_of_n(3)``, ``Rule.unanimous()`` or ``Rule.weighted_threshold(5.0)``.

    MAJORITY and FRACTION measure against the weight cast, or with of_electorate=True
    against the whole electorate's weight (so abstaining and staying away count against).
    """

    kind: RuleKind
    # FRACTION: (numerator, denominator), 0 < numerator <= denominator.
    ratio: tuple[int, int] = (0, 0)
    # K_OF_N: voters (counted, not weighted) an option needs.
    k: int = 0
    # WEIGHTED_THRESHOLD: the absolute weight an option needs.
    threshold_weight: float = 0.0
    of_electorate: bool = False

    @staticmethod
    def majority(*, of_electorate: bool = False) -> Rule:
        """More than half of the weight."""
        return Rule(RuleKind.MAJORITY, of_electorate=of_electorate)

    @staticmethod
    def fraction(numerator: int, denominator: int, *, of_electorate: bool = False) -> Rule:
        """At least numerator/denominator of the weight (exact: 2/3 is not 0.667)."""
        return Rule(RuleKind.FRACTION, ratio=(numerator, denominator), of_electorate=of_electorate)

    @staticmethod
    def k_of_n(k: int) -> Rule:
        """At least k voters choose the same option."""
        return Rule(RuleKind.K_OF_N, k=k)

    @staticmethod
    def unanimous() -> Rule:
        """Every voter casts a ballot and all who do not abstain agree."""
        return Rule(RuleKind.UNANIMOUS)

    @staticmethod
    def weighted_threshold(weight: float) -> Rule:
        """An option's weight reaches this absolute amount."""
        return Rule(RuleKind.WEIGHTED_THRESHOLD, threshold_weight=weight)

    def to_proto(self) -> votes_pb2.Rule:
        msg = votes_pb2.Rule(
            kind=votes_pb2.RuleKind.ValueType(int(self.kind)),
            k=self.k,
            threshold_weight=self.threshold_weight,
            of_electorate=self.of_electorate,
        )
        if self.kind is RuleKind.FRACTION:
            msg.fraction.numerator, msg.fraction.denominator = self.ratio
        return msg

    @staticmethod
    def from_proto(msg: votes_pb2.Rule) -> Rule:
        """The rule of a stored vote (``Rule.from_proto(vote.spec.rule)``)."""
        return Rule(
            RuleKind(msg.kind),
            ratio=(msg.fraction.numerator, msg.fraction.denominator),
            k=msg.k,
            threshold_weight=msg.threshold_weight,
            of_electorate=msg.of_electorate,
        )

    def describe(self, electorate_size: int | None = None) -> str:
        """The rule in words, e.g. "at least 2/3 of the weight cast"."""
        of = "the electorate's weight" if self.of_electorate else "the weight cast"
        if self.kind is RuleKind.MAJORITY:
            return f"more than half of {of}"
        if self.kind is RuleKind.FRACTION:
            return f"at least {self.ratio[0]}/{self.ratio[1]} of {of}"
        if self.kind is RuleKind.K_OF_N:
            of_n = f" of {electorate_size}" if electorate_size is not None else ""
            return f"at least {self.k}{of_n} voters choose the same option"
        if self.kind is RuleKind.WEIGHTED_THRESHOLD:
            return f"a weight of at least {self.threshold_weight:g}"
        return "every voter casts a ballot and all who do not abstain agree"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, slots=True)
class CastResult:
    ballot: Ballot
    # The vote's status after this ballot: DECIDED when this ballot settled it.
    status: VoteStatus
    decision: Decision | None
    # True when this answered a retry (the same request_id, or the identical ballot cast
    # before): nothing was stored now, and ballot is the one stored then.
    replayed: bool = False

    @property
    def decided(self) -> bool:
        return self.status is VoteStatus.DECIDED


@dataclass(frozen=True, slots=True)
class VotePage:
    # In id order, without ballots.
    votes: list[Vote]
    more: bool

    @property
    def next_after(self) -> str:
        """Pass as `after=` for the next page ("" when this is the last)."""
        return self.votes[-1].id if self.more and self.votes else ""


@dataclass(frozen=True, slots=True)
class VoteStateEvent:
    """First event of a watch: the vote as it stands, with every ballot so far."""

    vote: Vote


@dataclass(frozen=True, slots=True)
class BallotEvent:
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """Last event of a watch (also when the vote was decided before the watch began)."""

    decision: Decision

    @property
    def trace_context(self) -> TraceContext | None:
        """The deciding call's trace context (the last ballot's Cast, or the Cancel);
        None when it sent none, or the deadline decided."""
        return TraceContext._from(self.decision.trace_context)


VoteEvent = VoteStateEvent | BallotEvent | DecisionEvent


def _unfold(vote: Vote, first: bool, seen: set[tuple[str, int]]) -> builtins.list[VoteEvent]:
    """The events a watch's whole state stands for: the state itself on the first stream;
    on a later one (after a reconnect), the ballots not handed out yet; then the decision,
    if any. seen: (voter, revision) of the ballots handed out."""
    vote.ballots_omitted = 0
    events: builtins.list[VoteEvent] = []
    if first:
        events.append(VoteStateEvent(vote))
    else:
        events += [BallotEvent(b) for b in vote.ballots if (b.voter, b.revision) not in seen]
    seen.update((b.voter, b.revision) for b in vote.ballots)
    if vote.HasField("decision"):
        events.append(DecisionEvent(vote.decision))
    return events


def _request_id() -> str:
    return uuid.uuid4().hex


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _electorate(
    voters: Mapping[str, float] | Sequence[str] | None,
    lease_labels: Mapping[str, str] | None,
) -> votes_pb2.Electorate:
    if voters is not None and lease_labels is not None:
        raise ValueError("give voters or lease_labels, not both")
    if isinstance(voters, str):
        raise TypeError("voters is a list of agent ids (or a mapping to weights), not a str")
    if lease_labels is not None:
        return votes_pb2.Electorate(lease_labels=votes_pb2.LabelSelector(labels=dict(lease_labels)))
    if isinstance(voters, Mapping):
        named = [votes_pb2.Voter(agent_id=a, weight=float(w)) for a, w in voters.items()]
    else:
        named = [votes_pb2.Voter(agent_id=a) for a in voters or ()]
    return votes_pb2.Electorate(voters=votes_pb2.Voters(voters=named))


def _strings(name: str, values: Sequence[str]) -> builtins.list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} is a list of strings, not a str")
    return list(values)


class AsyncVotes:
    def __init__(self, transport: Transport, casts: CastBatches | None = None) -> None:
        self._t = transport
        # Casts share messages with concurrent casters (client/batching.py).
        self._casts = casts or CastBatches(None)

    def as_agent(self, agent_id: str) -> AsyncVotes:
        """This client's votes acting as another agent (with auth, one its principal may
        act as, such as an agent a runtime's service principal hosts): the same channels,
        token and batches, so the ballots of every agent a process hosts share messages."""
        return AsyncVotes(self._t.as_agent(agent_id), self._casts)

    @deprecation.renamed(timeout="voting_period")
    async def propose(
        self,
        question: str,
        options: Sequence[str],
        *,
        voters: Mapping[str, float] | Sequence[str] | None = None,
        lease_labels: Mapping[str, str] | None = None,
        rule: Rule | votes_pb2.Rule | None = None,
        quorum_voters: int = 0,
        quorum_weight: float = 0.0,
        veto_holders: Sequence[str] = (),
        deadline: datetime | None = None,
        voting_period: float | timedelta | None = None,
        allow_abstain: bool = False,
        allow_change: bool = False,
        on_tie: TiePolicy = TiePolicy.NO_DECISION,
        retention: float | timedelta | None = None,
        vote_id: str = "",
        request_id: str | None = None,
        call_timeout: float | None = None,
        timeout: float | timedelta | None = None,
    ) -> Vote:
        """Open a vote among voters (agent ids, or agent id -> weight) or among the agents
        holding live leases labelled lease_labels; it closes at deadline, or voting_period
        (seconds or a timedelta) from now. rule defaults to Rule.majority(). retention:
        how long it stays readable once decided. call_timeout is this call's deadline.
        `timeout=` is the deprecated name of voting_period, and keeps that meaning until
        it is removed."""
        spec = votes_pb2.VoteSpec(
            question=question,
            options=_strings("options", options),
            electorate=_electorate(voters, lease_labels),
            rule=rule if isinstance(rule, votes_pb2.Rule) else (rule or Rule.majority()).to_proto(),
            quorum=votes_pb2.Quorum(min_voters=quorum_voters, min_weight=quorum_weight),
            veto_holders=_strings("veto_holders", veto_holders),
            timeout_ms=round(_seconds(voting_period) * 1000) if voting_period is not None else 0,
            allow_abstain=allow_abstain,
            allow_change=allow_change,
            on_tie=votes_pb2.TiePolicy.ValueType(int(on_tie)),
            retention_seconds=math.ceil(_seconds(retention)) if retention is not None else 0,
        )
        if deadline is not None:
            spec.deadline.FromDatetime(deadline)
        request = votes_pb2.ProposeRequest(
            vote_id=vote_id, spec=spec, request_id=request_id or _request_id()
        )
        response = await self._t.unary(calls.VOTES_PROPOSE, request, timeout=call_timeout)
        return response.vote

    async def cast(
        self,
        vote_id: str,
        choice: str = "",
        *,
        abstain: bool = False,
        veto: bool = False,
        rationale: str = "",
        confidence: float = 0.0,
        fence: _Fencing | common_pb2.Fence | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> CastResult:
        """Cast (or, where the vote allows it, change) this agent's ballot: a choice, an
        abstention, or a veto (veto holders only). With fence, only while that lock grant
        holds (FencedError otherwise)."""
        request = votes_pb2.CastRequest(
            vote_id=vote_id,
            choice=choice,
            abstain=abstain,
            veto=veto,
            rationale=rationale,
            confidence=confidence,
            request_id=request_id or _request_id(),
        )
        if fence is not None:
            request.fence.CopyFrom(_fence(fence))
        response = await self._casts.cast(request, timeout, self._t)
        status = VoteStatus(response.status or votes_pb2.VOTE_STATUS_OPEN)
        decision = response.decision if response.HasField("decision") else None
        return CastResult(response.ballot, status, decision, response.replayed)

    async def get(self, vote_id: str, *, timeout: float | None = None) -> Vote:
        """The vote with every ballot, the running tally and, once decided, the decision.
        A vote whose ballots outgrow one message comes in pages, all read at the first
        one's revision; this fetches them all (timeout applies to each)."""
        request = votes_pb2.VotesGetRequest(vote_id=vote_id)
        response = await self._t.unary(calls.VOTES_GET, request, timeout=timeout)
        vote = response.vote
        while response.next_page_token:
            request.page_token = response.next_page_token
            response = await self._t.unary(calls.VOTES_GET, request, timeout=timeout)
            vote.ballots.extend(response.vote.ballots)
        vote.ballots_omitted = 0
        return vote

    async def list(
        self,
        status: VoteStatus | None = None,
        *,
        limit: int = 100,
        after: str = "",
        timeout: float | None = None,
    ) -> VotePage:
        """One page of votes (all, or those with status) in id order, after the id
        `after`; limit is at most 1000."""
        request = votes_pb2.VotesListRequest(
            status=votes_pb2.VoteStatus.ValueType(int(status or 0)), limit=limit, after=after
        )
        response = await self._t.unary(calls.VOTES_LIST, request, timeout=timeout)
        return VotePage(list(response.votes), response.more)

    async def scan(
        self, status: VoteStatus | None = None, *, page_size: int = 100
    ) -> AsyncIterator[Vote]:
        """Every vote (or every one with status), page by page, in id order."""
        after = ""
        while True:
            page = await self.list(status, limit=page_size, after=after)
            for vote in page.votes:
                yield vote
            if not page.next_after:
                return
            after = page.next_after

    async def cancel(
        self,
        vote_id: str,
        reason: str = "",
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Decision:
        """Close the vote without a decision (CANCELLED): its proposer, or an admin."""
        request = votes_pb2.VotesCancelRequest(
            vote_id=vote_id, reason=reason, request_id=request_id or _request_id()
        )
        response = await self._t.unary(calls.VOTES_CANCEL, request, timeout=timeout)
        return response.decision

    async def watch(
        self, vote_id: str, *, max_reconnects: int = 20
    ) -> AsyncGenerator[VoteEvent, None]:
        """The vote's state, then each ballot as it is cast, then the decision; then it
        ends. When the replica goes away it resumes on another: ballots cast meanwhile
        come as BallotEvents, none twice (the server starts over from the state, which
        is not handed out again). A state too large for one message arrives with its
        ballots following it; the VoteStateEvent holds them all."""
        seen: set[tuple[str, int]] = set()  # (voter, revision) of the ballots handed out
        started = False
        failures = 0
        request = votes_pb2.VotesWatchRequest(vote_id=vote_id)
        while True:
            state: Vote | None = None  # a state still gathering the ballots following it
            try:
                stream = self._t.stream(calls.VOTES_WATCH, request)
                async with contextlib.aclosing(stream):
                    async for response in stream:
                        failures = 0
                        kind = response.WhichOneof("event")
                        if kind == "state":
                            state = response.state
                        elif kind == "ballot" and state is not None:  # part of the state
                            state.ballots.append(response.ballot)
                            state.ballots_omitted -= 1
                        elif kind == "ballot":
                            if (response.ballot.voter, response.ballot.revision) not in seen:
                                seen.add((response.ballot.voter, response.ballot.revision))
                                yield BallotEvent(response.ballot)
                        elif kind == "decision":
                            yield DecisionEvent(response.decision)
                            return
                        if state is not None and state.ballots_omitted <= 0:
                            events = _unfold(state, not started, seen)
                            started, state = True, None
                            for event in events:
                                yield event
                            if events and isinstance(events[-1], DecisionEvent):
                                return
            except UnavailableError:
                failures += 1
                if failures > max_reconnects:
                    raise
            except QuotaExceededError as refused:  # open again when the server says
                failures += 1
                wait = pushback(refused, self._t.timeout)
                if wait is None or failures > max_reconnects:
                    raise
                await asyncio.sleep(wait)
                continue
            else:  # the replica ended the stream before the decision (shutting down)
                failures += 1
                if failures > max_reconnects:
                    raise UnavailableError(f"the watch of vote {vote_id!r} kept ending early")
            await asyncio.sleep(self._t.retry.backoff(min(failures, 5)))

    async def wait(self, vote_id: str, timeout: float | None = None) -> Decision:
        """The vote's decision, once there is one. DeadlineExceededError after timeout
        seconds (None: as long as the vote takes)."""
        events = self.watch(vote_id)
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    if isinstance(event, DecisionEvent):
                        return event.decision
        except TimeoutError:
            raise DeadlineExceededError(
                f"vote {vote_id!r} was not decided within {timeout}s"
            ) from None
        finally:
            await events.aclose()
        raise UnavailableError(f"the watch of vote {vote_id!r} ended without a decision")
