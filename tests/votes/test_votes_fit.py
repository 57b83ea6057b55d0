"""A vote too large for one message still reaches a standard gRPC client (4 MiB, default
channel options): 5,000 voters each with a 1 KiB rationale make ~5.5 MiB of ballots.
Get pages the ballots at one revision (next_page_token), Watch's state is followed by
the ballots it leaves out, and Accord's client puts every ballot back together."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from accord.client import AsyncClient
from accord.client.votes import BallotEvent, DecisionEvent, VoteStateEvent
from accord.v1 import votes_pb2
from tests.harness import Coordinator, Stubs, identity
from tests.votes.test_votes_bad_input import decode

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
VOTERS = [f"voter-{i:05d}" for i in range(5000)]
RATIONALE = "r" * 1024


async def _cast_all(replicas: list[Coordinator], namespace: str, vote_id: str) -> None:
    """Every voter's ballot, cast through both replicas, 50 at a time."""
    gate = asyncio.Semaphore(50)
    stubs = [Stubs(r.address) for r in replicas]

    async def cast(index: int, voter: str) -> None:
        async with gate:
            await stubs[index % 2].votes.Cast(
                votes_pb2.CastRequest(
                    vote_id=vote_id, choice=("yes", "no")[index % 2], rationale=RATIONALE
                ),
                metadata=identity(namespace, voter),
                timeout=60,
            )

    try:
        await asyncio.gather(*(cast(i, voter) for i, voter in enumerate(VOTERS)))
    finally:
        for stub in stubs:
            await stub.close()


async def _raw_get(raw: Stubs, namespace: str, vote_id: str) -> list[votes_pb2.Ballot]:
    """Every page of the vote through a default client, checking each is one snapshot."""
    ballots: list[votes_pb2.Ballot] = []
    token, revision, pages = "", 0, 0
    while True:
        page = await raw.votes.Get(
            votes_pb2.VotesGetRequest(vote_id=vote_id, page_token=token),
            metadata=identity(namespace, "reader"),
        )
        pages += 1
        assert page.ByteSize() < DEFAULT_MAX_MESSAGE
        revision = revision or page.header.revision
        assert page.header.revision == revision  # every page at the first one's revision
        vote = page.vote
        assert len(vote.voters) == len(VOTERS) and vote.tally.participated == len(VOTERS)
        assert vote.ballots_omitted == len(VOTERS) - len(vote.ballots)
        ballots += vote.ballots
        token = page.next_page_token
        if not token:
            break
    assert pages >= 2
    return ballots


def _in_order(ballots: list[votes_pb2.Ballot]) -> None:
    assert sorted(b.voter for b in ballots) == VOTERS  # each voter's ballot once
    keys = [(b.revision, b.voter) for b in ballots]
    assert keys == sorted(keys)  # in the order cast
    assert all(b.rationale == RATIONALE for b in ballots)


async def _raw_watch(raw: Stubs, namespace: str, vote_id: str) -> list[votes_pb2.Ballot]:
    """The state of a watch through a default client, with the ballots following it."""
    stream = raw.votes.Watch(
        votes_pb2.VotesWatchRequest(vote_id=vote_id),
        metadata=identity(namespace, "reader"),
        timeout=120,  # a state's missing followers fail the test instead of hanging it
    )
    try:
        first = await stream.read()
        assert first.WhichOneof("event") == "state"
        state = first.state
        assert state.ballots_omitted > 0 and state.tally.participated == len(VOTERS)
        ballots = list(state.ballots)
        for _ in range(state.ballots_omitted):
            follower = await stream.read()
            assert follower.WhichOneof("event") == "ballot"
            ballots.append(follower.ballot)
        return ballots
    finally:
        stream.cancel()


@pytest.mark.load
@pytest.mark.timeout(600)
async def test_a_vote_of_5000_ballots_reaches_default_clients(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    # allow_change: the vote stays open until its deadline, whatever the ballots say.
    vote = await client.votes.propose(
        "Ship it?", ["yes", "no"], voters=VOTERS, voting_period=900, allow_change=True
    )
    await _cast_all(replicas, namespace, vote.id)

    async with Stubs(replicas[0].address) as raw:  # no channel options: gRPC's defaults
        _in_order(await _raw_get(raw, namespace, vote.id))
        _in_order(await _raw_watch(raw, namespace, vote.id))

        now = (
            await raw.votes.Get(
                votes_pb2.VotesGetRequest(vote_id=vote.id), metadata=identity(namespace, "reader")
            )
        ).header.revision
        # Not a token, offsets no page starts at (0, past the ballots), a future revision.
        for bad in ("x", f"{now}.0", f"{now}.{len(VOTERS)}", f"1.{2**63}", f"{now + 10**9}.1"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw.votes.Get(
                    votes_pb2.VotesGetRequest(vote_id=vote.id, page_token=bad),
                    metadata=identity(namespace, "reader"),
                )
            failure = decode(refused.value)
            assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert failure.reason == "INVALID_ARGUMENT" and failure.fields == ["page_token"], bad

    got = await client.votes.get(vote.id)
    assert got.ballots_omitted == 0
    _in_order(list(got.ballots))

    # Accord's client: the state event holds every ballot; later ballots come after it.
    events = client.votes.watch(vote.id)
    try:
        state = await anext(events)
        assert isinstance(state, VoteStateEvent) and state.vote.ballots_omitted == 0
        _in_order(list(state.vote.ballots))
        async with Stubs(replicas[1].address) as raw:  # a changed ballot, after the state
            await raw.votes.Cast(
                votes_pb2.CastRequest(vote_id=vote.id, choice="no", rationale=RATIONALE),
                metadata=identity(namespace, VOTERS[0]),
            )
        changed = await anext(events)
        assert isinstance(changed, BallotEvent) and changed.ballot.voter == VOTERS[0]
        assert len(changed.ballot.replaced) == 1
        await client.votes.cancel(vote.id, "done")
        assert isinstance(await anext(events), DecisionEvent)
    finally:
        await events.aclose()

    # Decided: the same pages, and a watch whose state (with its ballots) ends the stream.
    async with Stubs(replicas[1].address) as raw:
        _in_order(await _raw_get(raw, namespace, vote.id))
        _in_order(await _raw_watch(raw, namespace, vote.id))
    seen = [event async for event in client.votes.watch(vote.id)]
    assert [type(e) for e in seen] == [VoteStateEvent, DecisionEvent]
    assert isinstance(seen[0], VoteStateEvent) and len(seen[0].vote.ballots) == len(VOTERS)
    assert not any(isinstance(e, BallotEvent) for e in seen)
