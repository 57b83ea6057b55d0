"""Presence: who is in a session, attached to a lease, fanned out to subscribers on every
replica, and gone when the lease ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from accord.client import (
    AsyncClient,
    ConditionFailedError,
    InvalidArgumentError,
    LeaseNotFoundError,
    PresenceEvent,
    PresenceGoneEvent,
    SessionEvent,
    UpdateEvent,
    ops,
)
from tests.harness import Coordinator, make_client


async def next_presence(events: AsyncIterator[SessionEvent]) -> SessionEvent:
    """The next presence event (updates skipped), within a bound."""
    async with asyncio.timeout(15):
        async for event in events:
            if not isinstance(event, UpdateEvent):
                return event
    raise AssertionError("the stream ended")


async def test_presence_vanishes_when_its_lease_expires(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    await a.sessions.open("room")
    events = b.sessions.subscribe("room", presence=True)
    assert isinstance(await anext(events), UpdateEvent)  # subscribed
    short = await a.leases.grant(ttl=2, keepalive=False)
    kept = await a.leases.grant(ttl=10)
    try:
        mine = await a.sessions.set_presence("room", short, {"cursor": 3, "task": "review"})
        assert mine.client_id and mine.lease_id == short.id and mine.agent_id == "tester"
        other = await a.sessions.set_presence("room", kept, {"status": "idle"}, client_id=77)
        seen = [await next_presence(events), await next_presence(events)]
        assert all(isinstance(e, PresenceEvent) for e in seen)
        states = {e.presence.client_id: e.presence.state for e in seen}  # type: ignore[union-attr]
        assert states == {mine.client_id: {"cursor": 3, "task": "review"}, 77: {"status": "idle"}}
        listed = (await a.sessions.read("room")).presence
        assert {p.client_id for p in listed} == {mine.client_id, other.client_id}

        gone = await next_presence(events)  # the short lease expires without keep-alives
        assert isinstance(gone, PresenceGoneEvent)
        assert gone.client_id == mine.client_id and gone.agent_id == "tester"
        assert gone.clock > mine.clock
        for replica in pinned:
            remaining = (await replica.sessions.read("room")).presence
            assert [p.client_id for p in remaining] == [77]
    finally:
        await kept.revoke()
        await events.aclose()


async def test_presence_updates_clear_and_reach_a_late_subscriber(
    pinned: list[AsyncClient],
) -> None:
    a, b = pinned
    await a.sessions.open("status")
    lease = await a.leases.grant(ttl=10)
    try:
        first = await a.sessions.set_presence("status", lease, {"step": 1})
        second = await a.sessions.set_presence("status", lease, {"step": 2})
        assert second.client_id == first.client_id and second.clock > first.clock
        late = b.sessions.subscribe("status", presence=True)
        current = await next_presence(late)  # the current set comes first
        assert isinstance(current, PresenceEvent) and current.presence.state == {"step": 2}
        await a.sessions.set_presence("status", lease, None)  # cleared
        cleared = await next_presence(late)
        assert isinstance(cleared, PresenceGoneEvent) and cleared.client_id == first.client_id
        assert (await b.sessions.read("status")).presence == []
        await late.aclose()
        # A subscriber that did not ask for presence gets none of it.
        quiet = b.sessions.subscribe("status")
        assert isinstance(await anext(quiet), UpdateEvent)
        await a.sessions.set_presence("status", lease, {"step": 3})
        applied = await a.sessions.apply("status", ops.map_set("m", "k", 1))
        follow = await anext(quiet)  # the presence change before it was skipped
        assert isinstance(follow, UpdateEvent) and follow.revision == applied.revision
        await quiet.aclose()
    finally:
        await lease.revoke()


async def test_synced_session_tracks_presence(replicas: list[Coordinator], namespace: str) -> None:
    async with (
        make_client([replicas[0].address], namespace, agent="watcher") as watcher,
        make_client([replicas[1].address], namespace, agent="worker") as worker,
    ):
        await worker.sessions.open("team")
        async with watcher.sessions.synced("team", presence=True) as live:
            lease = await worker.leases.grant(ttl=10)
            mine = await worker.sessions.set_presence("team", lease, {"doing": "tests"})
            async with asyncio.timeout(10):
                while mine.client_id not in live.presence:
                    await live.changed()
            assert live.presence[mine.client_id].agent_id == "worker"
            await lease.revoke()  # everything on the lease ends with it
            async with asyncio.timeout(10):
                while mine.client_id in live.presence:
                    await live.changed()


async def test_presence_is_refused_clearly(client: AsyncClient, namespace: str) -> None:
    await client.sessions.open("refusals")
    lease = await client.leases.grant(ttl=10)
    try:
        with pytest.raises(InvalidArgumentError):
            await client.sessions.set_presence("refusals", lease, {"blob": "x" * 9000})
        with pytest.raises(LeaseNotFoundError):
            await client.sessions.set_presence("refusals", 123456789, {"a": 1})
        taken = await client.sessions.set_presence("refusals", lease, {"a": 1}, client_id=5)
        other = await client.leases.grant(ttl=10)
        with pytest.raises(ConditionFailedError):  # client id 5 belongs to the first lease
            await client.sessions.set_presence("refusals", other, {"b": 2}, client_id=5)
        await other.revoke()
        assert [p.state for p in (await client.sessions.read("refusals")).presence] == [taken.state]
    finally:
        await lease.revoke()


async def test_racing_agents_never_share_a_client_id(
    replicas: list[Coordinator], namespace: str
) -> None:
    """Two agents claiming one free client id at once, on two replicas: exactly one gets
    it, and the other is refused (not told it succeeded and then silently overwritten)."""
    async with (
        make_client([replicas[0].address], namespace, agent="ada") as ada,
        make_client([replicas[1].address], namespace, agent="bob") as bob,
    ):
        await ada.sessions.open("race")
        leases = [await ada.leases.grant(ttl=10), await bob.leases.grant(ttl=10)]
        try:
            for client_id in range(1, 31):
                outcomes = await asyncio.gather(
                    *(
                        agent.sessions.set_presence(
                            "race", lease, {"n": client_id}, client_id=client_id
                        )
                        for agent, lease in zip((ada, bob), leases, strict=True)
                    ),
                    return_exceptions=True,
                )
                won = [o for o in outcomes if not isinstance(o, BaseException)]
                assert len(won) == 1, (client_id, outcomes)
                assert all(isinstance(o, ConditionFailedError) for o in outcomes if o not in won)
                stored = [
                    p
                    for p in (await bob.sessions.read("race")).presence
                    if p.client_id == client_id
                ]
                assert [(p.agent_id, p.lease_id) for p in stored] == [
                    (won[0].agent_id, won[0].lease_id)
                ]
        finally:
            for lease in leases:
                await lease.revoke()
