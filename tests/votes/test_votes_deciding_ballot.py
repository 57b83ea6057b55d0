"""The deciding ballot stores the decision in its own Txn (one etcd round trip between the
ballot and watchers seeing the decision), and only when no other ballot came since the
replica last read the vote: otherwise the ballots that came first are counted too. Over
raw gRPC, on two replicas; every decision written exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from accord.v1 import votes_pb2 as v
from tests.harness import Coordinator, EtcdMember
from tests.votes.test_votes import Agents, events, reason_of, record_versions, spec


@pytest.fixture
async def agents(replicas: list[Coordinator], namespace: str) -> AsyncIterator[Agents]:
    group = Agents(replicas, namespace)
    yield group
    await group.close()


def timers(etcd: EtcdMember, namespace: str, vote_id: str) -> list[str]:
    """The kinds of the vote's timers in etcd (close, expire): keyspace.vote_timer."""
    keys = [kv.key.decode() for kv in etcd.kvs("accord/vote-timers/", prefix=True)]
    parts = [k.rsplit("/", 1)[-1].split("\x00") for k in keys]
    return sorted(kind for _, kind, ns, vote in parts if (ns, vote) == (namespace, vote_id))


async def test_the_deciding_ballot_and_its_decision_are_one_txn_seen_by_every_watcher(
    agents: Agents, etcd: EtcdMember, namespace: str
) -> None:
    # Several votes: a watcher's feed sees the ballot and the decision of one revision in
    # either order, and must send the ballot first every time.
    for _ in range(4):
        vote = await agents.propose(spec(["a", "b", "c"]))
        streams = [
            agents.votes[i % 2].Watch(v.VotesWatchRequest(vote_id=vote.id), metadata=agents.md("w"))
            for i in range(4)
        ]
        states = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 30)
        assert all(state.WhichOneof("event") == "state" for state in states)
        readers = [asyncio.create_task(events(s)) for s in streams]
        first = await agents.cast(vote.id, "a", choice="yes")
        assert first.status == v.VOTE_STATUS_OPEN
        deciding = await agents.cast(vote.id, "b", choice="yes")  # 2 of 3: certain

        assert deciding.status == v.VOTE_STATUS_DECIDED
        decision = deciding.decision
        assert decision.outcome == v.OUTCOME_APPROVED and decision.option == "yes"
        assert decision.decided_by == v.DECIDED_BY_CERTAINTY
        assert decision.revision == deciding.ballot.revision == decision.last_ballot_revision
        assert decision.tally.participated == 2
        assert record_versions(etcd, namespace, vote.id) == 2  # proposed, decided: once
        assert timers(etcd, namespace, vote.id) == ["expire"]  # the close timer went with it
        got = await agents.get(vote.id, at=1)
        assert got.decision == decision
        assert [b.voter for b in got.ballots] == ["a", "b"]

        for got_events in await asyncio.wait_for(asyncio.gather(*readers), 30):
            assert [e.WhichOneof("event") for e in got_events] == ["ballot", "ballot", "decision"]
            assert [e.ballot.voter for e in got_events[:2]] == ["a", "b"]
            assert got_events[-1].decision == decision


async def test_a_deciding_ballot_overtaken_by_another_counts_it(
    agents: Agents, etcd: EtcdMember, namespace: str
) -> None:
    vote = await agents.propose(spec({"a": 1, "b": 1, "c": 3}))
    await agents.cast(vote.id, "a", choice="yes")  # replica 0 now knows the vote as {a}
    await agents.cast(vote.id, "b", at=1, choice="no")  # replica 0 does not know this one
    # By replica 0's last read, c's 3 decides: it tries to store the decision with c's
    # ballot, finds b's ballot came since, and decides counting it.
    deciding = await agents.cast(vote.id, "c", choice="yes")

    assert deciding.status == v.VOTE_STATUS_DECIDED
    decision = deciding.decision
    assert decision.outcome == v.OUTCOME_APPROVED and decision.option == "yes"
    assert decision.tally.participated == 3
    assert [(o.option, o.voters, o.weight) for o in decision.tally.options] == [
        ("yes", 2, 4.0),
        ("no", 1, 1.0),
    ]
    assert decision.last_ballot_revision == deciding.ballot.revision
    assert record_versions(etcd, namespace, vote.id) == 2
    got = await agents.get(vote.id, at=1)
    assert got.decision == decision
    assert sorted(b.voter for b in got.ballots) == ["a", "b", "c"]


async def test_a_retry_of_the_deciding_ballot_gets_its_first_answer(
    agents: Agents, etcd: EtcdMember, namespace: str
) -> None:
    """The decision written with (or after) a ballot must not turn that ballot's retry (its
    answer lost, say) into VOTE_CLOSED: on any replica, it gets its first answer."""
    vote = await agents.propose(spec(["a", "b", "c"]))
    await agents.cast(vote.id, "a", choice="yes")
    deciding = await agents.cast(vote.id, "b", choice="yes", request_id="b-1")
    assert deciding.status == v.VOTE_STATUS_DECIDED
    for at in (0, 1):
        retry = await agents.cast(vote.id, "b", at=at, choice="yes", request_id="b-1")
        assert retry.replayed
        assert retry.ballot == deciding.ballot
        assert retry.header.revision == deciding.header.revision
        assert retry.status == v.VOTE_STATUS_DECIDED and retry.decision == deciding.decision
    # Another ballot of the same agent on the closed vote is still refused.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await agents.cast(vote.id, "b", choice="yes", request_id="b-2")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value)[0] == "VOTE_CLOSED"
    assert record_versions(etcd, namespace, vote.id) == 2
