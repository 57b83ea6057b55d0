"""Votes and sessions list pages fit a standard gRPC client (4 MiB) whatever `limit` says:
records that may each be large (a vote's electorate, a session's declared roots) stop a
page early, and the next page goes on from there, each record once."""

from __future__ import annotations

from accord.client import AsyncClient
from accord.v1 import sessions_pb2, votes_pb2
from tests.harness import Coordinator, Stubs, identity

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


async def test_votes_list_pages_fit_a_default_client(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    # Each vote names 5,000 voters (~190 KiB): 24 of them outgrow one 4 MiB message.
    voters = {f"voter-{i:05d}-{'x' * 24}": 1.0 for i in range(5000)}
    ids = [
        (
            await client.votes.propose(
                f"question {n}", ["yes", "no"], voters=voters, voting_period=600
            )
        ).id
        for n in range(24)
    ]
    listed: list[str] = []
    after = ""
    async with Stubs(replicas[0].address) as raw:  # no channel options: gRPC's defaults
        while True:
            page = await raw.votes.List(
                votes_pb2.VotesListRequest(limit=1000, after=after),
                metadata=identity(namespace),
            )
            assert page.ByteSize() < DEFAULT_MAX_MESSAGE
            listed += [vote.id for vote in page.votes]
            assert all(len(vote.voters) == 5000 for vote in page.votes)
            if not page.more:
                break
            after = page.votes[-1].id
    assert listed == sorted(ids)  # each once, in id order
    assert [vote.id async for vote in client.votes.scan(page_size=1000)] == sorted(ids)
    for vote_id in ids:
        await client.votes.cancel(vote_id)


async def test_sessions_list_pages_fit_a_default_client(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    # Each session declares 128 roots with 1,000-byte names (~130 KiB of record).
    roots = {f"{i:03d}" + "r" * 997: "map" for i in range(128)}
    names = [f"s{n:02d}" for n in range(40)]  # ~5 MiB in all
    for name in names:
        await client.sessions.open(name, roots=roots)
    listed: list[str] = []
    token = ""
    async with Stubs(replicas[1].address) as raw:
        while True:
            page = await raw.sessions.List(
                sessions_pb2.SessionsListRequest(limit=1000, page_token=token),
                metadata=identity(namespace),
            )
            assert page.ByteSize() < DEFAULT_MAX_MESSAGE
            listed += [info.name for info in page.sessions]
            token = page.next_page_token
            if not token:
                break
    assert listed == names
    assert [info.name for info in await client.sessions.list()] == names
