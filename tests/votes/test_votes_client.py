"""The votes client (`accord.votes`) against the live replicas: propose, cast, get, list,
cancel; typed errors; retries that apply once; a watch that outlives its replica; the
blocking mirror."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from accord.client import (
    AlreadyVotedError,
    AsyncClient,
    BallotEvent,
    Client,
    ConditionFailedError,
    DeadlineExceededError,
    DecidedBy,
    DecisionEvent,
    FencedError,
    InvalidArgumentError,
    NotEligibleError,
    NotFoundError,
    NotPermittedError,
    Outcome,
    RequestIdReusedError,
    Rule,
    RuleKind,
    TiePolicy,
    VoteClosedError,
    VoteEvent,
    VoteStateEvent,
    VoteStatus,
)
from tests.harness import (
    Coordinator,
    EtcdMember,
    grant_labels,
    make_client,
    start_coordinator,
    token_for,
)

WAIT = 20.0  # seconds any one wait in these tests may take
Agent = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
async def agents(replicas: list[Coordinator], namespace: str) -> AsyncIterator[Agent]:
    """agent(name) is a client calling as that agent (through `only` replica, if given)."""
    async with contextlib.AsyncExitStack() as stack:

        async def agent(name: str, only: Coordinator | None = None) -> AsyncClient:
            addresses = [only.address] if only else [r.address for r in replicas]
            return await stack.enter_async_context(make_client(addresses, namespace, agent=name))

        yield agent


async def three_voters(agents: Agent, **options: object) -> tuple[list[AsyncClient], str]:
    """lead proposes "Ship it?" to alice, bob and carol (majority of the weight cast);
    returns their clients (lead first) and the vote's id."""
    lead = await agents("lead")
    args: dict[str, object] = {"voters": ["alice", "bob", "carol"], "voting_period": 60} | options
    vote = await lead.votes.propose("Ship it?", ["yes", "no"], **args)  # type: ignore[arg-type]
    voters = [await agents(n) for n in ("alice", "bob", "carol")]
    return [lead, *voters], vote.id


async def collect(events: AsyncIterator[VoteEvent]) -> list[VoteEvent]:
    return [e async for e in events]


# --- round trip -----------------------------------------------------------------------


async def test_propose_cast_get_until_decided(agents: Agent) -> None:
    lead = await agents("lead")
    vote = await lead.votes.propose(
        "Ship release 4.2?",
        ["yes", "no"],
        voters={"carol": 1, "alice": 2.5, "bob": 1},
        rule=Rule.majority(),
        voting_period=timedelta(minutes=1),
    )
    assert vote.id and vote.status == VoteStatus.OPEN
    assert vote.created_revision > 0
    assert vote.proposed_by.agent_id == "lead"
    assert [(v.agent_id, v.weight) for v in vote.voters] == [
        ("alice", 2.5),
        ("bob", 1.0),
        ("carol", 1.0),
    ]
    assert vote.spec.rule.kind == RuleKind.MAJORITY
    assert vote.spec.on_tie == TiePolicy.NO_DECISION
    due = vote.spec.deadline.ToDatetime(UTC) - datetime.now(UTC)
    assert timedelta(seconds=50) < due <= timedelta(seconds=61)

    alice, bob, carol = [await agents(n) for n in ("alice", "bob", "carol")]
    first = await bob.votes.cast(vote.id, "no", rationale="tests are red", confidence=0.9)
    assert first.status is VoteStatus.OPEN and first.decision is None and not first.decided
    assert (first.ballot.voter, first.ballot.choice, first.ballot.weight) == ("bob", "no", 1.0)
    assert first.ballot.revision > vote.created_revision
    assert first.ballot.rationale == "tests are red"

    # alice's 2.5 beats everything bob and carol could cast: decided now, not at the deadline.
    second = await alice.votes.cast(vote.id, "yes", confidence=0.6)
    assert second.decided and second.status is VoteStatus.DECIDED
    decision = second.decision
    assert decision is not None
    assert (decision.outcome, decision.option) == (Outcome.APPROVED, "yes")
    assert decision.decided_by == DecidedBy.CERTAINTY
    # Stored by the deciding ballot's own Txn: one revision for both, the ballot counted.
    assert decision.revision == second.ballot.revision == decision.last_ballot_revision
    assert "APPROVED" in decision.explanation and "yes" in decision.explanation

    got = await carol.votes.get(vote.id)
    assert got.status == VoteStatus.DECIDED
    assert got.decision == decision
    assert [(b.voter, b.choice) for b in got.ballots] == [("bob", "no"), ("alice", "yes")]
    yes, no = got.tally.options
    assert (yes.option, yes.voters, yes.weight, yes.mean_confidence) == ("yes", 1, 2.5, 0.6)
    assert (no.option, no.voters, no.weight) == ("no", 1, 1.0)
    assert (got.tally.participated, got.tally.electorate_size) == (2, 3)
    assert await lead.votes.wait(vote.id, timeout=WAIT) == decision

    with pytest.raises(VoteClosedError) as closed:
        await carol.votes.cast(vote.id, "no")
    assert closed.value.reason == "VOTE_CLOSED"
    assert closed.value.decision == decision
    assert len((await lead.votes.get(vote.id)).ballots) == 2  # carol's was not stored


async def test_rules_and_electorates(agents: Agent, namespace: str) -> None:
    lead = await agents("lead")
    alice, bob, carol = [await agents(n) for n in ("alice", "bob", "carol")]
    k = await lead.votes.propose(
        "Pick a db",
        ["pg", "sqlite"],
        voters=["alice", "bob", "carol"],
        rule=Rule.k_of_n(2),
        voting_period=60,
    )
    await alice.votes.cast(k.id, "pg")
    done = await bob.votes.cast(k.id, "pg")
    assert done.decision is not None and done.decision.option == "pg"
    assert "at least 2 of 3 voters" in done.decision.explanation

    vetoed = await lead.votes.propose(
        "Deploy on Friday?",
        ["yes", "no"],
        voters=["alice", "bob"],
        veto_holders=["carol"],
        rule=Rule.fraction(1, 2),
        voting_period=60,
    )
    assert (await alice.votes.cast(vetoed.id, "yes")).decision is None
    veto = await carol.votes.cast(vetoed.id, veto=True, rationale="freeze")
    assert veto.ballot.veto and veto.ballot.weight == 0
    assert veto.decision is not None and veto.decision.outcome == Outcome.VETOED
    assert veto.decision.tally.vetoed_by == ["carol"]

    unanimous = await lead.votes.propose(
        "Tabs or spaces?",
        ["tabs", "spaces"],
        voters=["alice", "bob"],
        rule=Rule.unanimous(),
        voting_period=60,
        on_tie=TiePolicy.ESCALATE,
        allow_abstain=True,
    )
    assert unanimous.spec.on_tie == TiePolicy.ESCALATE
    await alice.votes.cast(unanimous.id, "tabs")
    last = await bob.votes.cast(unanimous.id, abstain=True)  # abstaining is not disagreeing
    assert last.ballot.abstain
    assert last.decision is not None and last.decision.decided_by == DecidedBy.ALL_CAST
    assert (last.decision.outcome, last.decision.option) == (Outcome.APPROVED, "tabs")

    grant_labels(namespace, "alice", {"team": "infra"})
    grant_labels(namespace, "bob", {"team": "infra", "role": "oncall"})
    grant_labels(namespace, "carol", {"team": "web"})
    async with (
        await alice.leases.grant(10, labels={"team": "infra"}),
        await bob.leases.grant(10, labels={"team": "infra", "role": "oncall"}),
        await carol.leases.grant(10, labels={"team": "web"}),
    ):
        labelled = await lead.votes.propose(
            "Rotate keys?",
            ["yes", "no"],
            lease_labels={"team": "infra"},
            rule=Rule.weighted_threshold(2),
            voting_period=60,
        )
        assert [v.agent_id for v in labelled.voters] == ["alice", "bob"]
        assert labelled.spec.electorate.lease_labels.labels == {"team": "infra"}
        with pytest.raises(NotEligibleError):
            await carol.votes.cast(labelled.id, "yes")


# --- retries and idempotency ------------------------------------------------------------


async def test_a_retried_propose_or_cast_applies_once(agents: Agent) -> None:
    lead, alice = await agents("lead"), await agents("alice")
    args: dict[str, object] = {"voters": ["alice", "bob"], "voting_period": 60}
    first = await lead.votes.propose("Q?", ["a", "b"], request_id="prop-1", **args)  # type: ignore[arg-type]
    again = await lead.votes.propose("Q?", ["a", "b"], request_id="prop-1", **args)  # type: ignore[arg-type]
    assert (again.id, again.created_revision) == (first.id, first.created_revision)
    with pytest.raises(RequestIdReusedError):
        await lead.votes.propose("Other?", ["a", "b"], request_id="prop-1", **args)  # type: ignore[arg-type]
    other = await lead.votes.propose("Q?", ["a", "b"], **args)  # type: ignore[arg-type]
    assert other.id != first.id  # a fresh request_id: a second vote

    named = await lead.votes.propose("Named?", ["a", "b"], vote_id="release-42", **args)  # type: ignore[arg-type]
    assert named.id == "release-42"
    same = await lead.votes.propose("Named?", ["a", "b"], vote_id="release-42", **args)  # type: ignore[arg-type]
    assert same.created_revision == named.created_revision
    with pytest.raises(ConditionFailedError):
        await lead.votes.propose("Renamed?", ["a", "b"], vote_id="release-42", **args)  # type: ignore[arg-type]

    cast = await alice.votes.cast(first.id, "a", request_id="cast-1")
    recast = await alice.votes.cast(first.id, "a", request_id="cast-1")
    assert recast.ballot.revision == cast.ballot.revision
    assert [b.revision for b in (await lead.votes.get(first.id)).ballots] == [cast.ballot.revision]


async def test_a_cast_lost_with_its_replica_is_resent_with_its_request_id(
    replicas: list[Coordinator], etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    crashing = start_coordinator(
        workdir,
        f"crashing-{uuid.uuid4().hex[:6]}",
        [etcd.endpoint],
        env={"ACCORD_FAILPOINTS": "votes.cast.after_commit"},  # dies before it answers
    )
    try:
        async with (
            make_client([replicas[0].address], namespace, agent="lead") as lead,
            make_client([crashing.address, replicas[1].address], namespace, agent="a") as voter,
        ):
            vote = await lead.votes.propose(
                "Q?", ["yes", "no"], voters=["a", "b"], allow_change=True, voting_period=60
            )
            result = await voter.votes.cast(vote.id, "yes")  # stored, answer lost, resent
            assert crashing.popen is not None and crashing.popen.wait(10) == 137
            # A resend under a new request_id would have stored a second, replacing ballot.
            assert list(result.ballot.replaced) == []
            [stored] = (await lead.votes.get(vote.id)).ballots
            assert stored.revision == result.ballot.revision and not stored.replaced
    finally:
        crashing.kill()


# --- list and cancel ------------------------------------------------------------------


async def test_list_pages_scan_and_cancel(agents: Agent) -> None:
    lead, admin, mallory = await agents("lead"), await agents("admin"), await agents("mallory")
    ids = [f"v{i}" for i in range(5)]
    for vote_id in ids:
        await lead.votes.propose(
            f"Question {vote_id}?", ["a", "b"], voters=["alice"], voting_period=60, vote_id=vote_id
        )

    with pytest.raises(NotPermittedError) as refused:
        await mallory.votes.cancel("v1", "I do not like it")
    assert refused.value.reason == "NOT_PERMITTED"
    cancelled = await lead.votes.cancel("v1", "asked the wrong question")
    assert (cancelled.outcome, cancelled.decided_by) == (Outcome.CANCELLED, DecidedBy.CANCEL)
    assert (cancelled.cancelled_by, cancelled.cancel_reason) == ("lead", "asked the wrong question")
    assert await lead.votes.cancel("v1", "asked the wrong question") == cancelled  # retried
    by_admin = await admin.votes.cancel("v3")
    assert by_admin.cancelled_by == "admin"
    with pytest.raises(VoteClosedError) as closed:
        await mallory.votes.cancel("v3")
    assert closed.value.decision == by_admin

    page = await mallory.votes.list(limit=2)
    assert [v.id for v in page.votes] == ["v0", "v1"] and page.more and page.next_after == "v1"
    page = await mallory.votes.list(limit=2, after=page.next_after)
    assert [v.id for v in page.votes] == ["v2", "v3"] and page.more
    page = await mallory.votes.list(limit=2, after=page.next_after)
    assert [v.id for v in page.votes] == ["v4"] and not page.more and page.next_after == ""
    assert [v.id async for v in mallory.votes.scan(page_size=2)] == ids
    assert [v.id async for v in mallory.votes.scan(VoteStatus.OPEN, page_size=1)] == [
        "v0",
        "v2",
        "v4",
    ]
    decided = (await mallory.votes.list(VoteStatus.DECIDED)).votes
    assert [(v.id, v.decision.outcome) for v in decided] == [
        ("v1", Outcome.CANCELLED),
        ("v3", Outcome.CANCELLED),
    ]
    assert all(not v.ballots for v in decided)


# --- typed errors ---------------------------------------------------------------------


async def test_typed_errors(agents: Agent) -> None:
    (lead, alice, bob, carol), vote_id = await three_voters(agents, veto_holders=["lead"])
    outsider = await agents("outsider")

    with pytest.raises(NotEligibleError) as ineligible:
        await outsider.votes.cast(vote_id, "yes")
    assert ineligible.value.reason == "NOT_ELIGIBLE"
    with pytest.raises(NotEligibleError):
        await alice.votes.cast(vote_id, veto=True)  # a voter, but no veto holder

    stood = await alice.votes.cast(vote_id, "yes")
    assert (await alice.votes.cast(vote_id, "yes")).ballot.revision == stood.ballot.revision
    with pytest.raises(AlreadyVotedError) as already:
        await alice.votes.cast(vote_id, "no")
    assert already.value.reason == "ALREADY_VOTED"
    assert already.value.ballot is not None
    assert (already.value.ballot.choice, already.value.ballot.revision) == (
        "yes",
        stood.ballot.revision,
    )

    with pytest.raises(InvalidArgumentError) as bad_choice:
        await alice.votes.cast(vote_id, "maybe")
    assert [f for f, _ in bad_choice.value.field_violations] == ["choice"]
    with pytest.raises(InvalidArgumentError) as bad_abstain:
        await carol.votes.cast(vote_id, abstain=True, confidence=1.5)
    assert {f for f, _ in bad_abstain.value.field_violations} == {"abstain", "confidence"}
    with pytest.raises(NotFoundError):
        await alice.votes.get("no-such-vote")
    with pytest.raises(NotFoundError):
        await alice.votes.cast("no-such-vote", "yes")

    await lead.votes.cancel(vote_id)
    with pytest.raises(VoteClosedError) as closed:
        await bob.votes.cast(vote_id, "no")
    assert closed.value.decision is not None
    assert closed.value.decision.outcome == Outcome.CANCELLED


@pytest.mark.parametrize(
    ("kwargs", "fields"),
    [
        ({"voting_period": None}, {"spec.timeout_ms"}),
        ({"rule": Rule.fraction(3, 2)}, {"spec.rule.fraction"}),
        ({"rule": Rule.k_of_n(4)}, {"spec.rule.k"}),
        ({"voters": ["a", "a"]}, {"spec.electorate.voters.voters[1].agent_id"}),
        (
            {"options": ["x", "x"], "quorum_voters": -1},
            {"spec.options[1]", "spec.quorum.min_voters"},
        ),
        ({"quorum_weight": 4.0}, {"spec.quorum.min_weight"}),
        ({"deadline": datetime(2001, 1, 1, tzinfo=UTC), "voting_period": None}, {"spec.deadline"}),
        ({"deadline": datetime.now(UTC) + timedelta(hours=1)}, {"spec.timeout_ms"}),
        ({"retention": timedelta(days=400)}, {"spec.retention_seconds"}),
        ({"vote_id": "no spaces"}, {"vote_id"}),
    ],
    ids=[
        "no-deadline",
        "fraction",
        "k",
        "voters",
        "options+quorum",
        "quorum-weight",
        "past",
        "deadline+voting-period",
        "retention",
        "id",
    ],
)
async def test_bad_proposals_are_refused_and_store_nothing(
    client: AsyncClient, kwargs: dict[str, object], fields: set[str]
) -> None:
    args: dict[str, object] = {
        "voters": ["a", "b", "c"],
        "voting_period": 60,
        "options": ["x", "y"],
    }
    args |= kwargs
    options = args.pop("options")
    with pytest.raises(InvalidArgumentError) as refused:
        await client.votes.propose("Q?", options, **args)  # type: ignore[arg-type]
    assert {f for f, _ in refused.value.field_violations} == fields
    assert (await client.votes.list()).votes == []


async def test_client_side_misuse_is_a_python_error(client: AsyncClient) -> None:
    with pytest.raises(ValueError, match="not both"):
        await client.votes.propose(
            "Q?", ["a"], voters=["a"], lease_labels={"k": "v"}, voting_period=9
        )
    with pytest.raises(TypeError):
        await client.votes.propose("Q?", ["a"], voters="alice", voting_period=9)
    with pytest.raises(TypeError):
        await client.votes.propose("Q?", "a", voters=["alice"], voting_period=9)
    assert (await client.votes.list()).votes == []


async def test_fenced_ballot(agents: Agent) -> None:
    (lead, alice, bob, _), vote_id = await three_voters(agents)
    async with await alice.leases.grant(10) as lease:
        grant = await alice.locks.acquire("ballot-box", lease)
        held = await alice.votes.cast(vote_id, "yes", fence=grant)
        assert held.ballot.choice == "yes"
        await alice.locks.release(grant)
    async with await bob.leases.grant(10) as lease:
        mine = await bob.locks.acquire("ballot-box", lease)
        with pytest.raises(FencedError):
            await bob.votes.cast(vote_id, "no", fence=grant)  # alice's old grant: stale
        assert [b.voter for b in (await lead.votes.get(vote_id)).ballots] == ["alice"]
        await bob.votes.cast(vote_id, "no", fence=mine.fence())
        assert len((await lead.votes.get(vote_id)).ballots) == 2


# --- deadlines, watch and wait -----------------------------------------------------------


async def test_deadline_decides_and_wait_returns_it(agents: Agent) -> None:
    (lead, alice, _, _), vote_id = await three_voters(
        agents, voting_period=3, allow_change=True, quorum_voters=1
    )
    await alice.votes.cast(vote_id, "no")
    changed = await alice.votes.cast(vote_id, "yes")  # allow_change: replaces the first
    assert [b.choice for b in changed.ballot.replaced] == ["no"]
    with pytest.raises(DeadlineExceededError):
        await lead.votes.wait(vote_id, timeout=0.2)  # still open
    decision = await lead.votes.wait(vote_id, timeout=WAIT)
    assert decision.decided_by == DecidedBy.DEADLINE
    assert (decision.outcome, decision.option) == (Outcome.APPROVED, "yes")
    assert decision.quorum_met


async def test_watch_state_ballots_then_decision(agents: Agent) -> None:
    (lead, alice, bob, carol), vote_id = await three_voters(agents, rule=Rule.unanimous())
    await alice.votes.cast(vote_id, "yes")
    events = lead.votes.watch(vote_id)
    state = await anext(events)
    assert isinstance(state, VoteStateEvent)
    assert [b.voter for b in state.vote.ballots] == ["alice"]
    assert state.vote.tally.participated == 1
    await bob.votes.cast(vote_id, "yes", rationale="fine")
    await carol.votes.cast(vote_id, "yes")
    rest = await asyncio.wait_for(collect(events), WAIT)
    assert [type(e) for e in rest] == [BallotEvent, BallotEvent, DecisionEvent]
    assert [e.ballot.voter for e in rest if isinstance(e, BallotEvent)] == ["bob", "carol"]
    last = rest[-1]
    assert isinstance(last, DecisionEvent)
    assert last.decision.decided_by == DecidedBy.ALL_CAST
    assert last.decision == (await lead.votes.get(vote_id)).decision

    # A decided vote: its state, then its decision, then the end.
    again = await asyncio.wait_for(collect(lead.votes.watch(vote_id)), WAIT)
    assert [type(e) for e in again] == [VoteStateEvent, DecisionEvent]
    assert isinstance(again[1], DecisionEvent) and again[1].decision == last.decision


@pytest.mark.parametrize("fault", ["kill", "terminate"])
async def test_watch_continues_on_another_replica(
    live_replicas: list[Coordinator], namespace: str, fault: str
) -> None:
    first, second = live_replicas
    async with contextlib.AsyncExitStack() as stack:
        # The watcher calls the first replica while it lives; the voters only the second.
        watcher = await stack.enter_async_context(
            make_client([first.address, second.address], namespace, agent="watcher")
        )
        names = ["v1", "v2", "v3", "v4"]
        voters = {
            n: await stack.enter_async_context(make_client([second.address], namespace, agent=n))
            for n in names
        }
        vote = await voters["v1"].votes.propose(
            "Merge?", ["yes", "no"], voters=names, rule=Rule.unanimous(), voting_period=60
        )
        events = watcher.votes.watch(vote.id)
        stack.push_async_callback(events.aclose)
        seen: list[VoteEvent] = [await anext(events)]
        for name in names[:2]:
            await voters[name].votes.cast(vote.id, "yes")
            seen.append(await asyncio.wait_for(anext(events), WAIT))

        if fault == "kill":
            first.kill()  # a crash: the stream breaks
        else:
            await asyncio.to_thread(first.terminate)  # a drain: the replica ends its streams
        await voters["v3"].votes.cast(vote.id, "yes")  # while the watcher reconnects
        seen.append(await asyncio.wait_for(anext(events), WAIT))
        await voters["v4"].votes.cast(vote.id, "yes")  # settles it
        seen += await asyncio.wait_for(collect(events), WAIT)

    assert isinstance(seen[0], VoteStateEvent) and not seen[0].vote.ballots
    ballots = [e.ballot for e in seen if isinstance(e, BallotEvent)]
    assert [b.voter for b in ballots] == names  # each once, in order
    assert len({b.revision for b in ballots}) == 4
    decisions = [e for e in seen if isinstance(e, DecisionEvent)]
    assert len(decisions) == 1 and seen[-1] is decisions[0]
    assert decisions[0].decision.outcome == Outcome.APPROVED
    assert decisions[0].decision.decided_by == DecidedBy.ALL_CAST


# --- the blocking client ----------------------------------------------------------------


def test_sync_client_votes(replicas: list[Coordinator], namespace: str) -> None:
    addresses = [r.address for r in replicas]

    def client(agent: str) -> Client:
        token = token_for(namespace, agent)  # None (ACCORD_TOKEN) unless ACCORD_TEST_AUTH
        return Client(addresses, agent_id=agent, namespace=namespace, token=token)

    with client("lead") as lead, client("alice") as alice, client("bob") as bob:
        vote = lead.votes.propose(
            "Sync?", ["yes", "no"], voters=["alice", "bob"], rule=Rule.majority(), voting_period=60
        )
        assert lead.votes.get(vote.id).status == VoteStatus.OPEN
        events = lead.votes.watch(vote.id)
        assert isinstance(next(events), VoteStateEvent)
        assert alice.votes.cast(vote.id, "yes").decision is None
        ballot = next(events)
        assert isinstance(ballot, BallotEvent) and ballot.ballot.voter == "alice"
        result = bob.votes.cast(vote.id, "yes")
        assert result.decided and result.decision is not None
        ballot = next(events)
        assert isinstance(ballot, BallotEvent) and ballot.ballot.voter == "bob"
        decided = next(events)
        assert isinstance(decided, DecisionEvent) and decided.decision == result.decision
        assert next(events, None) is None
        assert lead.votes.wait(vote.id, timeout=WAIT) == result.decision

        other = lead.votes.propose("Cancel me?", ["a"], voters=["alice"], voting_period=60)
        assert lead.votes.cancel(other.id, "no need").outcome == Outcome.CANCELLED
        assert [v.id for v in lead.votes.list().votes] == sorted([vote.id, other.id])
        assert {v.id for v in lead.votes.scan(VoteStatus.DECIDED, page_size=1)} == {
            vote.id,
            other.id,
        }
        with pytest.raises(VoteClosedError):
            alice.votes.cast(other.id, "a")
