"""Votes.CastMany from any gRPC client: each Cast gets what a lone Cast would have
answered, or that Cast's error with the same details; a batch too large is refused whole
and casts nothing."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2

from accord.client import Rule
from accord.v1 import votes_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity, make_client

VOTER = "voter-1"


def cast(vote_id: str, choice: str = "yes") -> votes_pb2.CastOp:
    return votes_pb2.CastOp(
        cast=votes_pb2.CastRequest(vote_id=vote_id, choice=choice, request_id=uuid.uuid4().hex)
    )


def reason(outcome: votes_pb2.CastOutcome) -> str:
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in outcome.error.details if d.Is(info.DESCRIPTOR))
    return info.reason


async def test_one_agent_votes_in_many_votes_in_one_message(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with make_client([r.address for r in replicas], namespace, agent="chair") as chair:
        votes = [
            await chair.votes.propose(
                f"q{i}",
                ["yes", "no"],
                voters=[VOTER, "voter-2"],
                rule=Rule.majority(),
                voting_period=600,
            )
            for i in range(6)
        ]
        closed = await chair.votes.propose(
            "closed", ["yes", "no"], voters=[VOTER, "voter-2"], voting_period=600
        )
        await chair.votes.cancel(closed.id)
        other = await chair.votes.propose(
            "not mine", ["yes", "no"], voters=["voter-2"], voting_period=600
        )
    async with Stubs(replicas[0].address) as raw:
        response = await raw.votes.CastMany(
            votes_pb2.CastManyRequest(
                casts=[
                    *(cast(v.id) for v in votes),
                    cast(closed.id),
                    cast(other.id),
                    cast(votes[0].id, choice="maybe"),
                ]
            ),
            metadata=identity(namespace, VOTER),
        )
    outcomes = list(response.outcomes)
    assert len(outcomes) == 9
    for outcome, vote in zip(outcomes[:6], votes, strict=True):
        assert outcome.cast.ballot.voter == VOTER and outcome.cast.ballot.choice == "yes"
        assert outcome.cast.status == votes_pb2.VOTE_STATUS_OPEN  # 1 of 2 is no majority
        assert outcome.cast.header.revision <= response.header.revision
        assert vote.id
    assert reason(outcomes[6]) == "VOTE_CLOSED"
    assert reason(outcomes[7]) == "NOT_ELIGIBLE"
    assert reason(outcomes[8]) in {"INVALID_ARGUMENT", "ALREADY_VOTED"}


async def test_a_batch_over_the_limit_is_refused_whole_and_casts_nothing(
    replicas: list[Coordinator], namespace: str, etcd: EtcdMember
) -> None:
    async with make_client([replicas[0].address], namespace, agent="chair") as chair:
        vote = await chair.votes.propose(
            "q", ["yes", "no"], voters=[VOTER, "voter-2"], voting_period=600
        )
    before = etcd.stored(namespace)
    async with Stubs(replicas[0].address) as raw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.votes.CastMany(
                votes_pb2.CastManyRequest(casts=[cast(vote.id) for _ in range(257)]),
                metadata=identity(namespace, VOTER),
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert etcd.stored(namespace) == before


async def test_the_client_batches_concurrent_casts(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with make_client([replicas[0].address], namespace, agent="chair") as chair:
        votes = [
            await chair.votes.propose(
                f"q{i}", ["yes", "no"], voters=[VOTER, "voter-2"], voting_period=600
            )
            for i in range(20)
        ]
    async with make_client([replicas[0].address], namespace, agent=VOTER) as voter:
        results = await asyncio.gather(*(voter.votes.cast(v.id, "yes") for v in votes))
        assert voter._casts.batches >= 1
    assert [r.ballot.choice for r in results] == ["yes"] * 20
