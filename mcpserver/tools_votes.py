"""Quorum votes as MCP tools: accord_votes_propose, _cast, _get, _wait and _cancel.

A vote is decided by the service exactly once, as soon as the missing ballots can no
longer change the outcome or at its deadline, and its decision carries an explanation
(which rule fired and why); accord_votes_get adds, for an open vote, where it stands.
Waiting for a decision is a bounded wait (accord_votes_wait, at most MAX_WAIT_SECONDS per
call) that returns the vote as it stands when the wait ends undecided, with the advice to
call again: no tool call hangs for as long as a vote may take. While it waits it reports
each ballot as MCP progress, when the caller asked for progress.

Propose, cast and cancel carry a request_id (made up per call unless given): a host that
retries a call with the same request_id gets the first answer, never a second vote or
ballot. A ballot cast with `lock` is fenced by this session's grant of that lock.

Error handling: Accord refusals (not eligible, already voted, vote closed, fenced, quota,
...) become tool results through refusals.py; a wait that ends undecided is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from accord.client import DecisionEvent, Rule, TiePolicy, VoteStateEvent
from accord.mcpserver import hints, views
from accord.mcpserver.context import AgentSession, Facade

MAX_WAIT_SECONDS = 30.0
DEFAULT_WAIT_SECONDS = 20.0

VoteId = Annotated[str, Field(description="The vote's id (accord_votes_propose returns it)")]
RequestId = Annotated[
    str | None,
    Field(description="Idempotency key: a retry with the same request_id gets the first answer"),
]
LockName = Annotated[
    str | None,
    Field(
        description="Cast only while this session holds this lock (its fencing token goes "
        "with the ballot): a ballot from an agent that lost the lock is refused as FENCED"
    ),
]


class CastView(BaseModel):
    ballot: views.BallotView
    status: str = Field(description="The vote's status after this ballot: OPEN or DECIDED")
    decision: views.DecisionView | None = Field(
        None, description="Set when this ballot decided the vote"
    )
    replayed: bool = Field(
        description="True when this answered a retry: nothing new was stored, and ballot is "
        "the one stored then"
    )


class WaitView(BaseModel):
    decided: bool
    vote: views.VoteView
    next_step: str = Field(description="What to do now")


def _rule(
    rule: str,
    numerator: int,
    denominator: int,
    k: int,
    threshold_weight: float,
    of_electorate: bool,
) -> Rule:
    if rule == "fraction":
        return Rule.fraction(numerator, denominator, of_electorate=of_electorate)
    if rule == "k_of_n":
        return Rule.k_of_n(k)
    if rule == "unanimous":
        return Rule.unanimous()
    if rule == "weighted_threshold":
        return Rule.weighted_threshold(threshold_weight)
    return Rule.majority(of_electorate=of_electorate)


async def wait_for_decision(
    session: AgentSession, ctx: Context[Any, Any], vote_id: str, wait_seconds: float
) -> WaitView:
    """Follow the vote for at most wait_seconds (capped): its decision, or where it stands."""
    bound = min(wait_seconds, MAX_WAIT_SECONDS)
    events = session.client.votes.watch(vote_id)
    seen, electorate = 0, 0
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                async for event in events:
                    if isinstance(event, DecisionEvent):
                        break
                    if isinstance(event, VoteStateEvent):
                        seen = event.vote.tally.participated
                        electorate = event.vote.tally.electorate_size
                        message = f"{seen} of {electorate} voters have cast a ballot"
                    else:
                        seen += 1
                        message = f"{event.ballot.voter} cast a ballot"
                    # Sent only when the caller asked for progress.
                    await ctx.report_progress(seen, electorate or None, message)
    finally:
        await events.aclose()
    vote = views.vote(await session.client.votes.get(vote_id))
    if vote.decision is not None:
        return WaitView(decided=True, vote=vote, next_step="Decided: act on vote.decision.")
    return WaitView(
        decided=False,
        vote=vote,
        next_step=(
            f"Still open after {bound:g} s. Call accord_votes_wait again to keep waiting, "
            "or do other work and check back with accord_votes_get."
        ),
    )


def register(server: MCPServer[Any], facade: Facade) -> None:
    @server.tool(
        name="accord_votes_propose",
        description=(
            "Open a vote among agents, for when several must agree before one acts (merge a "
            "change, pick a plan). Name the voters (or weights, or lease_labels: every agent "
            "holding a live lease with those labels), the options and the rule. Returns the "
            "vote: its id, the rule in words, the electorate. Give the id to the voters, "
            "then follow it with accord_votes_wait. With request_id (or vote_id) a retry "
            "opens no second vote."
        ),
        annotations=hints.writes("Open a vote", destructive=False, idempotent=False),
    )
    async def accord_votes_propose(
        ctx: Context[Any, Any],
        question: Annotated[str, Field(description="What is being decided, in one sentence")],
        options: Annotated[list[str], Field(description='The choices, e.g. ["yes", "no"]')],
        voters: Annotated[list[str] | None, Field(description="Agent ids that may vote")] = None,
        weights: Annotated[
            dict[str, float] | None, Field(description="Agent id -> weight, instead of voters")
        ] = None,
        lease_labels: Annotated[
            dict[str, str] | None,
            Field(description="Instead of voters: agents holding a live lease with these labels"),
        ] = None,
        rule: Annotated[
            Literal["majority", "fraction", "k_of_n", "unanimous", "weighted_threshold"],
            Field(description="When an option wins"),
        ] = "majority",
        numerator: Annotated[int, Field(description="fraction: numerator/denominator")] = 2,
        denominator: Annotated[int, Field(description="fraction: see numerator")] = 3,
        k: Annotated[int, Field(description="k_of_n: voters an option needs")] = 0,
        threshold_weight: Annotated[float, Field(description="weighted_threshold: weight")] = 0.0,
        of_electorate: Annotated[
            bool, Field(description="majority/fraction of the whole electorate's weight")
        ] = False,
        quorum_voters: Annotated[int, Field(description="Ballots needed for any decision")] = 0,
        veto_holders: Annotated[list[str] | None, Field(description="Agents who may veto")] = None,
        voting_period_seconds: Annotated[
            float, Field(gt=0, description="How long the vote stays open at most")
        ] = 300.0,
        allow_abstain: bool = False,
        allow_change: Annotated[bool, Field(description="Voters may change their ballot")] = False,
        on_tie: Annotated[
            Literal["no_decision", "escalate"], Field(description="What a tie ends as")
        ] = "no_decision",
        vote_id: Annotated[str, Field(description="Optional id to give the vote")] = "",
        request_id: RequestId = None,
    ) -> Annotated[CallToolResult, views.VoteView]:
        async def work(s: AgentSession) -> views.VoteView:
            vote = await s.client.votes.propose(
                question,
                options,
                voters=weights if weights is not None else voters,
                lease_labels=lease_labels,
                rule=_rule(rule, numerator, denominator, k, threshold_weight, of_electorate),
                quorum_voters=quorum_voters,
                veto_holders=veto_holders or (),
                voting_period=voting_period_seconds,
                allow_abstain=allow_abstain,
                allow_change=allow_change,
                on_tie=TiePolicy.ESCALATE if on_tie == "escalate" else TiePolicy.NO_DECISION,
                vote_id=vote_id,
                request_id=request_id,
            )
            return views.vote(vote)

        return await facade.run(ctx, work)

    @server.tool(
        name="accord_votes_cast",
        description=(
            "Cast this agent's ballot: a choice, an abstention or a veto (veto holders "
            "only). The same ballot again is answered with the stored one (replayed), never "
            "counted twice. Returns the ballot and, if it settled the vote, the decision with "
            "its explanation. Refusals: NOT_ELIGIBLE (not a voter), ALREADY_VOTED (changes "
            "not allowed), VOTE_CLOSED (decided: read it with accord_votes_get), FENCED (with "
            "lock: the lock was lost, so do not vote on its behalf)."
        ),
        annotations=hints.writes("Cast a ballot", destructive=False, idempotent=True),
    )
    async def accord_votes_cast(
        ctx: Context[Any, Any],
        vote_id: VoteId,
        choice: Annotated[str, Field(description="One of the vote's options")] = "",
        abstain: Annotated[bool, Field(description="Abstain (if the vote allows)")] = False,
        veto: Annotated[bool, Field(description="Veto (veto holders only)")] = False,
        rationale: Annotated[str, Field(description="Why, for the record (≤ 4096 bytes)")] = "",
        confidence: Annotated[float, Field(ge=0, le=1, description="0-1; 0: not given")] = 0.0,
        request_id: RequestId = None,
        lock: LockName = None,
    ) -> Annotated[CallToolResult, CastView]:
        async def work(s: AgentSession) -> CastView:
            result = await s.client.votes.cast(
                vote_id,
                choice,
                abstain=abstain,
                veto=veto,
                rationale=rationale,
                confidence=confidence,
                request_id=request_id,
                fence=s.fence(lock) if lock else None,
            )
            return CastView(
                ballot=views.ballot(result.ballot),
                status=result.status.name,
                decision=views.decision(result.decision) if result.decision is not None else None,
                replayed=result.replayed,
            )

        return await facade.run(ctx, work)

    @server.tool(
        name="accord_votes_get",
        description=(
            "A vote as it stands: question, options, the rule in words, the electorate, "
            "every ballot, the tally and, once decided, the decision. `explanation` says "
            "which rule fired and why (decided) or where it stands and what settles it "
            "(open). Refusals: NOT_FOUND (no such vote, or its retention ran out)."
        ),
        annotations=hints.read_only("Read a vote"),
    )
    async def accord_votes_get(
        ctx: Context[Any, Any], vote_id: VoteId
    ) -> Annotated[CallToolResult, views.VoteView]:
        async def work(s: AgentSession) -> views.VoteView:
            return views.vote(await s.client.votes.get(vote_id))

        return await facade.run(ctx, work)

    @server.tool(
        name="accord_votes_wait",
        description=(
            f"Wait for a vote's decision, at most wait_seconds (≤ {MAX_WAIT_SECONDS:g}) in "
            "this call. decided=true: the decision and its explanation are in vote.decision. "
            "decided=false: still open (vote shows the ballots so far); call "
            "accord_votes_wait again to keep waiting, or do other work and come back. "
            "Reports each ballot as progress when the call asks for progress."
        ),
        annotations=hints.read_only("Wait for a vote's decision"),
    )
    async def accord_votes_wait(
        ctx: Context[Any, Any],
        vote_id: VoteId,
        wait_seconds: Annotated[
            float, Field(gt=0, description=f"At most {MAX_WAIT_SECONDS:g} per call")
        ] = DEFAULT_WAIT_SECONDS,
    ) -> Annotated[CallToolResult, WaitView]:
        return await facade.run(ctx, lambda s: wait_for_decision(s, ctx, vote_id, wait_seconds))

    @server.tool(
        name="accord_votes_cancel",
        description=(
            "Close an open vote without a decision (outcome CANCELLED): its proposer (or an "
            "admin) only. Returns the CANCELLED decision. Refusals: PERMISSION_DENIED (not "
            "yours), VOTE_CLOSED (already decided)."
        ),
        annotations=hints.writes("Cancel a vote", destructive=True, idempotent=True),
    )
    async def accord_votes_cancel(
        ctx: Context[Any, Any],
        vote_id: VoteId,
        reason: Annotated[str, Field(description="Why, for the record")] = "",
        request_id: RequestId = None,
    ) -> Annotated[CallToolResult, views.DecisionView]:
        async def work(s: AgentSession) -> views.DecisionView:
            decision = await s.client.votes.cancel(vote_id, reason, request_id=request_id)
            return views.decision(decision)

        return await facade.run(ctx, work)
