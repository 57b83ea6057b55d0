"""Admin commands for votes: `accord votes ls|show|watch`, and how a vote, its ballots
and its decision are rendered for people."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Annotated

import typer
from google.protobuf import timestamp_pb2
from rich.console import Group, RenderableType

from accord.client import (
    AsyncClient,
    BallotEvent,
    DecisionEvent,
    Rule,
    VoteEvent,
    VoteStatus,
)
from accord.coordinator.cli.common import (
    ADDR,
    AGENT,
    NAMESPACE,
    AddrOpt,
    AgentOpt,
    NamespaceOpt,
    Output,
    OutputOpt,
    TokenOpt,
    ago,
    as_dict,
    call,
    duration,
    emit,
    fields_table,
    table_of,
    when,
)
from accord.v1 import votes_pb2


class VoteFilter(StrEnum):
    open = "open"
    decided = "decided"
    all = "all"


votes_app = typer.Typer(help="Inspect votes and follow them.", no_args_is_help=True)


_VOTE_STATUS = {
    VoteFilter.open: VoteStatus.OPEN,
    VoteFilter.decided: VoteStatus.DECIDED,
    VoteFilter.all: None,
}
_OUTCOMES = {v: n.removeprefix("OUTCOME_") for n, v in votes_pb2.Outcome.items()}
_DECIDED_BY = {
    votes_pb2.DECIDED_BY_CERTAINTY: "certain before the deadline",
    votes_pb2.DECIDED_BY_ALL_CAST: "every ballot cast",
    votes_pb2.DECIDED_BY_DEADLINE: "at the deadline",
    votes_pb2.DECIDED_BY_CANCEL: "cancelled",
}


def _short(text: str, limit: int) -> str:
    """One line, at most limit characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _num(value: float) -> str:
    return f"{value:g}"


def _relative(ts: timestamp_pb2.Timestamp) -> str:
    """When ts is, from now: "in 4m10s" or "3s ago"."""
    if not ts.seconds:
        return "-"
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts.seconds))
    left = ts.seconds - int(time.time())
    return f"{at} (in {duration(left)})" if left > 0 else f"{at} ({ago(ts)})"


def _outcome(decision: votes_pb2.Decision) -> str:
    name = _OUTCOMES.get(decision.outcome, str(decision.outcome))
    return f"{name} {decision.option!r}" if decision.option else name


def _vote_status(vote: votes_pb2.Vote) -> str:
    return _outcome(vote.decision) if vote.HasField("decision") else "open"


def _participation(vote: votes_pb2.Vote) -> str:
    """Ballots cast of the electorate: "2/5" (from the tally, or from ballots_cast for an
    open vote as List gives it; "-/5" from a service too old to count them)."""
    if vote.HasField("tally"):
        return f"{vote.tally.participated}/{vote.tally.electorate_size}"
    if vote.HasField("decision"):
        return f"{vote.decision.tally.participated}/{vote.decision.tally.electorate_size}"
    if vote.HasField("ballots_cast"):
        return f"{vote.ballots_cast}/{len(vote.voters)}"
    return f"-/{len(vote.voters)}"


def _turnout(tally: votes_pb2.Tally) -> str:
    text = (
        f"{tally.participated} of {tally.electorate_size} voters "
        f"(weight {_num(tally.participated_weight)} of {_num(tally.electorate_weight)}), "
        f"{tally.abstained} abstaining"
    )
    return text + (f", vetoed by {', '.join(tally.vetoed_by)}" if tally.vetoed_by else "")


def _ballot_text(ballot: votes_pb2.Ballot) -> str:
    parts = [ballot.choice] if ballot.choice else []
    if ballot.abstain:
        parts.append("abstain")
    if ballot.veto:
        parts.append("VETO")
    return " + ".join(parts) or "no veto"  # a veto holder outside the electorate


def _electorate(vote: votes_pb2.Vote) -> str:
    weight = sum(v.weight for v in vote.voters)
    text = f"{len(vote.voters)} voters, weight {_num(weight)}"
    if vote.spec.electorate.WhichOneof("source") == "lease_labels":
        labels = vote.spec.electorate.lease_labels.labels
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        text += f" (live leases labelled {selector})"
    return text


def _quorum(quorum: votes_pb2.Quorum) -> str:
    parts = []
    if quorum.min_voters:
        parts.append(f"{quorum.min_voters} voters")
    if quorum.min_weight:
        parts.append(f"weight {_num(quorum.min_weight)}")
    return " and ".join(parts) or "none"


def _vote_tables(vote: votes_pb2.Vote) -> Group:
    spec = vote.spec
    rule = Rule.from_proto(spec.rule)
    tie = "escalate" if spec.on_tie == votes_pb2.TIE_POLICY_ESCALATE else "no decision"
    summary = fields_table(
        f"vote {vote.id}: {_vote_status(vote)}",
        [
            ("question", spec.question),
            ("options", ", ".join(spec.options)),
            ("rule", rule.describe(len(vote.voters))),
            ("electorate", _electorate(vote)),
            ("quorum", _quorum(spec.quorum)),
            ("veto holders", ", ".join(spec.veto_holders) or "-"),
            ("deadline", _relative(spec.deadline)),
            (
                "abstain / change",
                f"{'allowed' if spec.allow_abstain else 'not allowed'} / "
                f"{'allowed' if spec.allow_change else 'not allowed'}",
            ),
            ("on a tie", tie),
            (
                "proposed by",
                f"{vote.proposed_by.agent_id or '-'}, "
                f"{when(vote.proposed_by.written_at)}, revision {vote.created_revision}",
            ),
            ("participation", _turnout(vote.tally)),
        ],
    )
    ballots = table_of(
        "ballots, in the order cast",
        ["VOTER", "BALLOT", "WEIGHT", "CONFIDENCE", "CAST AT", "REVISION", "RATIONALE"],
        [
            (
                b.voter,
                _ballot_text(b),
                _num(b.weight),
                _num(b.confidence) if b.confidence else "-",
                when(b.cast_at),
                b.revision,
                _short(b.rationale, 60) or "-",
            )
            for b in vote.ballots
        ],
    )
    tally = vote.tally
    options = table_of(
        "tally",
        ["OPTION", "VOTERS", "WEIGHT", "MEAN CONFIDENCE"],
        [
            (o.option, o.voters, _num(o.weight), _num(o.mean_confidence) if o.voters else "-")
            for o in tally.options
        ],
    )
    parts: list[RenderableType] = [summary, "", ballots, "", options]
    if vote.HasField("decision"):
        d = vote.decision
        pairs: list[tuple[str, object]] = [
            ("outcome", _outcome(d)),
            ("decided by", _DECIDED_BY.get(d.decided_by, str(d.decided_by))),
            ("decided at", f"{when(d.decided_at)}, revision {d.revision}"),
            ("quorum met", "yes" if d.quorum_met else "no"),
        ]
        if d.cancelled_by or d.cancel_reason:
            pairs.append(("cancelled by", f"{d.cancelled_by or '-'}: {d.cancel_reason or '-'}"))
        pairs.append(("explanation", " ".join(d.explanation.split())))
        parts += ["", fields_table("decision", pairs)]
    return Group(*parts)


def _event_line(event: VoteEvent) -> str:
    """One line per watch event, for people."""
    if isinstance(event, BallotEvent):
        b = event.ballot
        confidence = f", confidence {_num(b.confidence)}" if b.confidence else ""
        rationale = f": {_short(b.rationale, 100)}" if b.rationale else ""
        return (
            f"ballot    {b.voter} -> {_ballot_text(b)} (weight {_num(b.weight)}{confidence}, "
            f"revision {b.revision}){rationale}"
        )
    if isinstance(event, DecisionEvent):
        d = event.decision
        by = _DECIDED_BY.get(d.decided_by, str(d.decided_by))
        return (
            f"decision  {_outcome(d)} ({by}, revision {d.revision}): "
            f"{' '.join(d.explanation.split())}"
        )
    vote = event.vote
    return (
        f"state     {vote.id}: {_vote_status(vote)}, {_participation(vote)} voted, "
        f"deadline {_relative(vote.spec.deadline)}: {_short(vote.spec.question, 80)}"
    )


def _event_json(event: VoteEvent) -> str:
    """One line per watch event: the contract's VotesWatchResponse, without its header."""
    if isinstance(event, BallotEvent):
        message = votes_pb2.VotesWatchResponse(ballot=event.ballot)
    elif isinstance(event, DecisionEvent):
        message = votes_pb2.VotesWatchResponse(decision=event.decision)
    else:
        message = votes_pb2.VotesWatchResponse(state=event.vote)
    return json.dumps(as_dict(message), separators=(",", ":"))


@votes_app.command("ls")
def votes_ls(
    status: Annotated[VoteFilter, typer.Option(help="open, decided or all")] = VoteFilter.all,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """Votes, newest first: status or outcome, question, ballots cast, deadline."""

    async def work(client: AsyncClient) -> list[votes_pb2.Vote]:
        return [v async for v in client.votes.scan(_VOTE_STATUS[status], page_size=1000)]

    votes = call(addr, namespace, agent, work, token)
    votes.sort(key=lambda v: v.created_revision, reverse=True)
    rows = [
        (
            v.id,
            _vote_status(v),
            _short(v.spec.question, 60),
            _participation(v),
            _relative(v.spec.deadline),
        )
        for v in votes
    ]
    table = table_of(
        f"votes in {namespace}", ["ID", "STATUS", "QUESTION", "VOTED", "DEADLINE"], rows
    )
    emit(output, [as_dict(v) for v in votes], table)


@votes_app.command("show")
def votes_show(
    vote_id: Annotated[str, typer.Argument(metavar="ID", help="the vote's id")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """A vote: what it asks and how it decides, every ballot, the tally, the decision."""
    vote = call(addr, namespace, agent, lambda c: c.votes.get(vote_id), token)
    emit(output, as_dict(vote), _vote_tables(vote))


@votes_app.command("watch")
def votes_watch(
    vote_id: Annotated[str, typer.Argument(metavar="ID", help="the vote's id")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = AGENT,
    token: TokenOpt = "",
) -> None:
    """Follow a vote: its state, each ballot as it is cast, then the decision (and exit).

    One line per event; with -o json, one JSON object per line ({"state": ...},
    {"ballot": ...} or {"decision": ...}). Carries on across replica failures.
    """

    async def work(client: AsyncClient) -> None:
        await client.votes.get(vote_id)  # an unknown vote or a dead service fails fast
        async for event in client.votes.watch(vote_id):
            typer.echo(_event_json(event) if output is Output.json else _event_line(event))

    try:
        call(addr, namespace, agent, work, token)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
