"""Votes against real etcd and real replicas, through raw gRPC stubs (as any language
would call them): concurrency across replicas, crashes between storing and answering,
deadlines with the proposer gone, vetoes, fencing, label electorates, changes,
cancellation and retention. Every decision is checked to be written exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from aetcd.rpc import rpc_pb2 as rpc
from google.rpc import error_details_pb2, status_pb2

from accord.v1 import common_pb2, leases_pb2, locks_pb2
from accord.v1 import votes_pb2 as v
from tests.harness import (
    Coordinator,
    EtcdMember,
    EtcdStubs,
    Metadata,
    Stubs,
    grant_labels,
    identity,
    start_coordinator,
    wall_clock_past,
)


class Agents:
    """Raw stubs per replica; every call names its agent and the test's namespace."""

    def __init__(self, replicas: list[Coordinator], namespace: str) -> None:
        self.namespace = namespace
        self.stubs = [Stubs(r.address) for r in replicas]
        self.votes = [s.votes for s in self.stubs]
        self.leases = [s.leases for s in self.stubs]
        self.locks = [s.locks for s in self.stubs]

    def md(self, agent: str) -> Metadata:
        return identity(self.namespace, agent)

    async def propose(self, spec: v.VoteSpec, *, by: str = "proposer", at: int = 0) -> v.Vote:
        response = await self.votes[at].Propose(
            v.ProposeRequest(spec=spec, request_id=uuid.uuid4().hex), metadata=self.md(by)
        )
        return response.vote

    async def cast(self, vote_id: str, agent: str, at: int = 0, **fields: object) -> v.CastResponse:
        fields.setdefault("request_id", uuid.uuid4().hex)
        return await self.votes[at].Cast(
            v.CastRequest(vote_id=vote_id, **fields),  # type: ignore[arg-type]
            metadata=self.md(agent),
        )

    async def get(self, vote_id: str, at: int = 0) -> v.Vote:
        response = await self.votes[at].Get(
            v.VotesGetRequest(vote_id=vote_id), metadata=self.md("reader")
        )
        return response.vote

    async def close(self) -> None:
        for stubs in self.stubs:
            await stubs.close()


@pytest.fixture
async def agents(replicas: list[Coordinator], namespace: str) -> AsyncIterator[Agents]:
    group = Agents(replicas, namespace)
    yield group
    await group.close()


def spec(
    voters: list[str] | dict[str, float],
    *,
    rule: v.Rule | None = None,
    options: tuple[str, ...] = ("yes", "no"),
    timeout_ms: int = 60_000,
    **fields: object,
) -> v.VoteSpec:
    weights = voters if isinstance(voters, dict) else dict.fromkeys(voters, 1.0)
    return v.VoteSpec(
        question="ship it?",
        options=options,
        electorate=v.Electorate(
            voters=v.Voters(voters=[v.Voter(agent_id=a, weight=w) for a, w in weights.items()])
        ),
        rule=rule or v.Rule(kind=v.RULE_KIND_MAJORITY),
        timeout_ms=timeout_ms,
        **fields,  # type: ignore[arg-type]
    )


def reason_of(error: grpc.aio.AioRpcError) -> tuple[str, list[object]]:
    """The ErrorInfo reason and the other decoded details of a failed call."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, error
    status = status_pb2.Status.FromString(raw)  # type: ignore[arg-type]
    reason, details = "", []
    for packed in status.details:
        for kind in (error_details_pb2.ErrorInfo, v.Decision, v.Ballot, common_pb2.FenceFailure):
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                if isinstance(message, error_details_pb2.ErrorInfo):
                    reason = message.reason
                else:
                    details.append(message)
    return reason, details


def record_versions(etcd: EtcdMember, namespace: str, vote_id: str) -> int:
    """How many times the vote's record was written (1 = proposed, 2 = decided once)."""
    return etcd.kvs(f"accord/ns/{namespace}/votes/{vote_id}")[0].version


async def events(stream: object) -> list[v.VotesWatchResponse]:
    """Every message of a Watch stream, read to its end."""
    out = []
    while (event := await stream.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        out.append(event)
    return out


async def test_hundred_voters_through_two_replicas_every_acknowledged_ballot_counted(
    agents: Agents, etcd: EtcdMember, namespace: str
) -> None:
    voters = [f"agent-{i:03d}" for i in range(100)]
    vote = await agents.propose(spec(voters))
    # 70 for yes, 30 for no: the majority becomes certain part-way, and later ballots are
    # refused; exactly the acknowledged ones must be in the decision.
    choices = {a: "yes" if i % 10 < 7 else "no" for i, a in enumerate(voters)}

    async def one(i: int, agent: str) -> tuple[str, v.CastResponse | str]:
        try:
            return agent, await agents.cast(vote.id, agent, at=i % 2, choice=choices[agent])
        except grpc.aio.AioRpcError as exc:
            reason, _ = reason_of(exc)
            return agent, reason

    results = await asyncio.gather(*(one(i, a) for i, a in enumerate(voters)))
    accepted = {a for a, r in results if isinstance(r, v.CastResponse)}
    refused = {a: r for a, r in results if not isinstance(r, v.CastResponse)}
    assert set(refused.values()) <= {"VOTE_CLOSED"}, refused
    final = await agents.get(vote.id, at=1)
    assert final.status == v.VOTE_STATUS_DECIDED
    assert final.decision.outcome == v.OUTCOME_APPROVED and final.decision.option == "yes"
    assert {b.voter for b in final.ballots} == accepted
    tally = {t.option: t.voters for t in final.decision.tally.options}
    assert tally["yes"] == sum(1 for a in accepted if choices[a] == "yes")
    assert tally["no"] == sum(1 for a in accepted if choices[a] == "no")
    assert final.decision.tally.participated == len(accepted)
    # Certain once yes has 51 of 100: it decided early, and only once.
    assert tally["yes"] >= 51
    assert record_versions(etcd, namespace, vote.id) == 2
    decided = {
        r.decision.SerializeToString(deterministic=True)
        for _, r in results
        if isinstance(r, v.CastResponse) and r.status == v.VOTE_STATUS_DECIDED
    }
    assert len(decided) >= 1
    assert all(v.Decision.FromString(d).revision == final.decision.revision for d in decided), (
        "every caller that saw the decision saw the same one"
    )


async def test_all_hundred_counted_when_only_the_last_ballot_decides(
    agents: Agents, etcd: EtcdMember, namespace: str
) -> None:
    voters = [f"agent-{i:03d}" for i in range(100)]
    vote = await agents.propose(
        spec(voters, rule=v.Rule(kind=v.RULE_KIND_UNANIMOUS), allow_abstain=True)
    )
    await asyncio.gather(
        *(
            agents.cast(
                vote.id, a, at=i % 2, **({"abstain": True} if i % 4 == 0 else {"choice": "yes"})
            )
            for i, a in enumerate(voters)
        )
    )
    final = await agents.get(vote.id)
    assert final.decision.outcome == v.OUTCOME_APPROVED
    assert final.decision.decided_by == v.DECIDED_BY_ALL_CAST
    assert final.decision.tally.participated == 100
    assert final.decision.tally.abstained == 25
    assert final.decision.tally.options[0].voters == 75
    assert len(final.ballots) == 100
    assert record_versions(etcd, namespace, vote.id) == 2


@pytest.fixture
def crashing_replica(etcd: EtcdMember, workdir: Path) -> Iterator[Coordinator]:
    """A replica that dies right after storing a ballot, before answering."""
    replica = start_coordinator(
        workdir,
        f"crashing-{uuid.uuid4().hex[:6]}",
        [etcd.endpoint],
        env={"ACCORD_FAILPOINTS": "votes.cast.after_commit"},
    )
    yield replica
    if replica.running():
        replica.kill()


@pytest.mark.parametrize("with_request_id", [True, False])
async def test_replica_dies_between_storing_a_ballot_and_answering(
    agents: Agents,
    crashing_replica: Coordinator,
    etcd: EtcdMember,
    namespace: str,
    with_request_id: bool,
) -> None:
    vote = await agents.propose(spec(["a", "b", "c"]))
    request_id = uuid.uuid4().hex if with_request_id else ""
    async with Stubs(crashing_replica.address) as raw:
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await raw.votes.Cast(
                v.CastRequest(vote_id=vote.id, choice="yes", request_id=request_id),
                metadata=agents.md("a"),
                timeout=10,
            )
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert crashing_replica.popen is not None and crashing_replica.popen.wait(10) == 137
    # The voter retries the same ballot on another replica: stored once, counted once.
    retried = await agents.cast(vote.id, "a", at=1, choice="yes", request_id=request_id)
    assert retried.ballot.voter == "a" and retried.ballot.choice == "yes"
    now = await agents.get(vote.id)
    assert [b.voter for b in now.ballots] == ["a"]
    assert now.tally.participated == 1 and now.tally.options[0].voters == 1
    assert retried.ballot.revision == now.ballots[0].revision
    async with EtcdStubs(etcd.endpoint) as raw:
        key = f"accord/ns/{namespace}/ballots/{vote.id}\x00a".encode()
        found = await raw.kv.Range(rpc.RangeRequest(key=key))
    assert found.kvs[0].version == 1  # written once


async def test_deadline_closes_the_vote_with_the_proposers_replica_gone(
    agents: Agents, etcd: EtcdMember, workdir: Path, namespace: str
) -> None:
    proposer_replica = start_coordinator(
        workdir, f"proposer-{uuid.uuid4().hex[:6]}", [etcd.endpoint]
    )
    try:
        async with Stubs(proposer_replica.address) as raw:
            stub = raw.votes
            proposed = await stub.Propose(
                v.ProposeRequest(spec=spec(["a", "b", "c"], timeout_ms=2500)),
                metadata=agents.md("proposer"),
            )
            vote = proposed.vote
            await stub.Cast(v.CastRequest(vote_id=vote.id, choice="no"), metadata=agents.md("a"))
    finally:
        proposer_replica.kill()
    # Watch from both survivors, started before the deadline: only a replica's own timer
    # can decide the vote now (nobody calls Cast or Get on it again).
    streams = [
        agents.votes[i].Watch(v.VotesWatchRequest(vote_id=vote.id), metadata=agents.md("w"))
        for i in range(2)
    ]
    seen = await asyncio.wait_for(asyncio.gather(*(events(s) for s in streams)), 30)
    deadline = vote.spec.deadline.ToMilliseconds() / 1000
    for got in seen:
        assert got[0].state.status == v.VOTE_STATUS_OPEN
        last = got[-1].decision
        assert last.decided_by == v.DECIDED_BY_DEADLINE
        assert last.outcome == v.OUTCOME_APPROVED and last.option == "no"
        assert last.decided_at.ToMilliseconds() / 1000 >= deadline
    assert seen[0][-1].decision == seen[1][-1].decision
    # Both survivors' timers fired; one decision was written.
    assert record_versions(etcd, namespace, vote.id) == 2


async def test_cast_after_the_deadline_is_refused_and_closes_the_vote(agents: Agents) -> None:
    vote = await agents.propose(spec(["a", "b"], timeout_ms=300))
    # Past the deadline, before any timer need have acted.
    await wall_clock_past(vote.spec.deadline.ToMilliseconds() / 1000)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await agents.cast(vote.id, "a", choice="yes")
    assert reason_of(refused.value)[0] == "VOTE_CLOSED"
    final = await agents.get(vote.id)
    # Nobody voted and no quorum was set: no option meets the rule.
    assert final.decision.outcome == v.OUTCOME_REJECTED
    assert not final.ballots


async def test_veto_decides_at_once_and_a_pending_veto_holds_approval(agents: Agents) -> None:
    vetoed = await agents.propose(spec(["a", "b", "c"], veto_holders=["legal"]))
    first = await agents.cast(vetoed.id, "a", choice="yes")
    second = await agents.cast(vetoed.id, "b", choice="yes")
    # Two of three already make a majority, but legal has not spoken: not certain.
    assert first.status == second.status == v.VOTE_STATUS_OPEN
    cast = await agents.cast(vetoed.id, "legal", at=1, veto=True, rationale="contract says no")
    assert cast.status == v.VOTE_STATUS_DECIDED
    assert cast.decision.outcome == v.OUTCOME_VETOED
    assert list(cast.decision.tally.vetoed_by) == ["legal"]
    assert "legal" in cast.decision.explanation

    approved = await agents.propose(spec(["a", "b", "c"], veto_holders=["legal"]))
    await agents.cast(approved.id, "a", choice="yes")
    await agents.cast(approved.id, "b", choice="yes")
    cleared = await agents.cast(approved.id, "legal", veto=False)
    assert cleared.decision.outcome == v.OUTCOME_APPROVED
    assert cleared.decision.decided_by == v.DECIDED_BY_CERTAINTY


async def test_a_fenced_ballot_needs_its_lock(agents: Agents) -> None:
    lease = await agents.leases[0].Grant(
        leases_pb2.GrantRequest(ttl_seconds=30), metadata=agents.md("a")
    )
    lease_id = lease.lease.id
    grant = await agents.locks[0].Acquire(
        locks_pb2.AcquireRequest(name="ballot-box", lease_id=lease_id), metadata=agents.md("a")
    )
    fence = common_pb2.Fence(lock="ballot-box", token=grant.grant.token)
    vote = await agents.propose(spec(["a", "b", "c"]))
    ok = await agents.cast(vote.id, "a", choice="yes", fence=fence)
    assert ok.ballot.choice == "yes"
    await agents.locks[0].Release(
        locks_pb2.ReleaseRequest(name="ballot-box", lease_id=lease_id), metadata=agents.md("a")
    )
    other = await agents.propose(spec(["a", "b", "c"]))
    with pytest.raises(grpc.aio.AioRpcError) as fenced:
        await agents.cast(other.id, "a", at=1, choice="yes", fence=fence)
    assert reason_of(fenced.value)[0] == "FENCED"
    assert not (await agents.get(other.id)).ballots


async def test_electorate_from_lease_labels(agents: Agents) -> None:
    for agent, team in [("r1", "review"), ("r2", "review"), ("x1", "ops")]:
        grant_labels(agents.namespace, agent, {"team": team})
        await agents.leases[0].Grant(
            leases_pb2.GrantRequest(ttl_seconds=30, labels={"team": team}),
            metadata=agents.md(agent),
        )
    vote = await agents.propose(
        v.VoteSpec(
            question="merge?",
            options=["merge", "hold"],
            electorate=v.Electorate(lease_labels=v.LabelSelector(labels={"team": "review"})),
            rule=v.Rule(kind=v.RULE_KIND_UNANIMOUS),
            timeout_ms=60_000,
        )
    )
    assert [(x.agent_id, x.weight) for x in vote.voters] == [("r1", 1.0), ("r2", 1.0)]
    with pytest.raises(grpc.aio.AioRpcError) as outsider:
        await agents.cast(vote.id, "x1", choice="merge")
    assert reason_of(outsider.value)[0] == "NOT_ELIGIBLE"
    await agents.cast(vote.id, "r1", choice="merge")
    done = await agents.cast(vote.id, "r2", at=1, choice="merge")
    assert done.decision.outcome == v.OUTCOME_APPROVED
    assert done.decision.decided_by == v.DECIDED_BY_ALL_CAST


async def test_changed_ballots_keep_their_history_and_decide_at_the_deadline(
    agents: Agents,
) -> None:
    vote = await agents.propose(spec(["a", "b"], timeout_ms=1500, allow_change=True))
    stream = agents.votes[1].Watch(v.VotesWatchRequest(vote_id=vote.id), metadata=agents.md("w"))
    state = await stream.read()
    assert isinstance(state, v.VotesWatchResponse) and not state.state.ballots
    await agents.cast(vote.id, "a", choice="yes")
    await agents.cast(vote.id, "b", choice="yes")
    # Everyone has voted, but both could still change: nothing is decided yet.
    changed = await agents.cast(vote.id, "b", at=1, choice="no", rationale="new facts")
    assert changed.status == v.VOTE_STATUS_OPEN
    assert [r.choice for r in changed.ballot.replaced] == ["yes"]
    seen = await asyncio.wait_for(events(stream), 30)
    assert seen[-1].WhichOneof("event") == "decision"
    assert [e.ballot.choice for e in seen if e.HasField("ballot")] == ["yes", "yes", "no"]
    decision = seen[-1].decision
    assert decision.decided_by == v.DECIDED_BY_DEADLINE
    assert decision.outcome == v.OUTCOME_TIED  # one each: a tie, no decision by default
    final = await agents.get(vote.id)
    assert {b.voter: b.choice for b in final.ballots} == {"a": "yes", "b": "no"}


async def test_cancel_by_proposer_or_admin_only_and_idempotent(agents: Agents) -> None:
    vote = await agents.propose(spec(["a", "b"]), by="lead")
    with pytest.raises(grpc.aio.AioRpcError) as stranger:
        await agents.votes[0].Cancel(v.VotesCancelRequest(vote_id=vote.id), metadata=agents.md("a"))
    assert reason_of(stranger.value)[0] == "NOT_PERMITTED"
    await agents.cast(vote.id, "a", choice="yes")
    cancelled = await agents.votes[1].Cancel(
        v.VotesCancelRequest(vote_id=vote.id, reason="question withdrawn"),
        metadata=agents.md("lead"),
    )
    decision = cancelled.decision
    assert decision.outcome == v.OUTCOME_CANCELLED
    assert decision.cancelled_by == "lead" and decision.cancel_reason == "question withdrawn"
    assert decision.tally.participated == 1
    again = await agents.votes[0].Cancel(
        v.VotesCancelRequest(vote_id=vote.id), metadata=agents.md("lead")
    )
    assert again.decision == decision
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await agents.cast(vote.id, "b", choice="no")
    reason, details = reason_of(closed.value)
    assert reason == "VOTE_CLOSED" and details == [decision]

    by_admin = await agents.propose(spec(["a", "b"]), by="lead")
    done = await agents.votes[0].Cancel(
        v.VotesCancelRequest(vote_id=by_admin.id), metadata=agents.md("admin")
    )
    assert done.decision.cancelled_by == "admin"


async def test_propose_is_idempotent_and_ids_are_not_reused(agents: Agents) -> None:
    proposal = spec(["a", "b"])
    first = await agents.votes[0].Propose(
        v.ProposeRequest(spec=proposal, request_id="p-1"), metadata=agents.md("lead")
    )
    retried = await agents.votes[1].Propose(
        v.ProposeRequest(spec=proposal, request_id="p-1"), metadata=agents.md("lead")
    )
    assert retried.vote.id == first.vote.id
    assert retried.vote.created_revision == first.vote.created_revision
    listed = await agents.votes[0].List(v.VotesListRequest(), metadata=agents.md("x"))
    assert [x.id for x in listed.votes] == [first.vote.id]
    different = spec(["a", "b", "c"])
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await agents.votes[0].Propose(
            v.ProposeRequest(spec=different, request_id="p-1"), metadata=agents.md("lead")
        )
    assert reason_of(reused.value)[0] == "REQUEST_ID_REUSED"
    named = await agents.votes[0].Propose(
        v.ProposeRequest(vote_id="release-42", spec=proposal), metadata=agents.md("lead")
    )
    assert named.vote.id == "release-42"
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await agents.votes[1].Propose(
            v.ProposeRequest(vote_id="release-42", spec=different), metadata=agents.md("lead")
        )
    assert reason_of(taken.value)[0] == "CONDITION_FAILED"


async def test_list_by_status_and_pages(agents: Agents) -> None:
    ids = []
    for i in range(5):
        vote = await agents.propose(spec(["a"], rule=v.Rule(kind=v.RULE_KIND_K_OF_N, k=1)))
        ids.append(vote.id)
        if i % 2 == 0:
            await agents.cast(vote.id, "a", choice="yes")
    decided = await agents.votes[0].List(
        v.VotesListRequest(status=v.VOTE_STATUS_DECIDED), metadata=agents.md("x")
    )
    assert sorted(x.id for x in decided.votes) == sorted(ids[0::2])
    assert all(x.decision.outcome == v.OUTCOME_APPROVED for x in decided.votes)
    open_ = await agents.votes[1].List(
        v.VotesListRequest(status=v.VOTE_STATUS_OPEN), metadata=agents.md("x")
    )
    assert sorted(x.id for x in open_.votes) == sorted(ids[1::2])
    pages, after = [], ""
    while True:
        page = await agents.votes[0].List(
            v.VotesListRequest(limit=2, after=after), metadata=agents.md("x")
        )
        pages.append([x.id for x in page.votes])
        if not page.more:
            break
        after = page.votes[-1].id
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == sorted(ids)


async def test_decided_votes_are_deleted_after_their_retention(
    agents: Agents, etcd: EtcdMember, namespace: str
) -> None:
    vote = await agents.propose(spec(["a"], retention_seconds=1))
    cast = await agents.cast(vote.id, "a", choice="yes")
    assert cast.status == v.VOTE_STATUS_DECIDED
    assert (await agents.get(vote.id)).ballots  # readable after the decision
    record = f"accord/ns/{namespace}/votes/{vote.id}".encode()
    async with EtcdStubs(etcd.endpoint) as raw:
        found = await raw.kv.Range(rpc.RangeRequest(key=record))
        if found.kvs:  # wait for the timers to delete it: a watch, not polling

            async def requests() -> AsyncIterator[rpc.WatchRequest]:
                yield rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=record, start_revision=found.header.revision + 1
                    )
                )
                await asyncio.Event().wait()

            async def deleted() -> None:
                async for response in raw.watch.Watch(requests()):
                    if any(e.type == e.DELETE for e in response.events):
                        return

            await asyncio.wait_for(deleted(), 30)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await agents.get(vote.id, at=1)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    prefix = f"accord/ns/{namespace}/ballots/{vote.id}"
    assert etcd.ctl("get", "--prefix", prefix).strip() == ""


async def test_watchers_on_both_replicas_see_every_ballot_then_the_decision(
    agents: Agents,
) -> None:
    vote = await agents.propose(spec(["a", "b", "c"], rule=v.Rule(kind=v.RULE_KIND_UNANIMOUS)))
    streams = [
        agents.votes[i % 2].Watch(v.VotesWatchRequest(vote_id=vote.id), metadata=agents.md("w"))
        for i in range(6)
    ]
    readers = [asyncio.create_task(events(s)) for s in streams]
    await agents.cast(vote.id, "a", choice="yes")
    await agents.cast(vote.id, "b", at=1, choice="yes")
    await agents.cast(vote.id, "c", choice="yes")
    for got in await asyncio.wait_for(asyncio.gather(*readers), 30):
        assert got[0].WhichOneof("event") == "state"
        assert got[-1].decision.outcome == v.OUTCOME_APPROVED
        voters = [
            b.voter
            for e in got[:-1]
            for b in ([e.ballot] if e.HasField("ballot") else e.state.ballots)
        ]
        assert sorted(voters) == ["a", "b", "c"]
    # A watch of a decided vote: its state, already decided, and the stream ends.
    late = await events(
        agents.votes[1].Watch(v.VotesWatchRequest(vote_id=vote.id), metadata=agents.md("w"))
    )
    assert len(late) == 1 and late[0].state.status == v.VOTE_STATUS_DECIDED
