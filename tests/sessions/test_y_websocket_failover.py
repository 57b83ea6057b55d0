"""A Yjs app's presence when its replica crashes: reconnecting elsewhere with the same
awareness client id, the app is present again at once, not only after the dead replica's
lease for its socket expires. No other agent can take that client id meanwhile.

Raw y-protocols sockets (Python websockets) stand in for the app: unlike y-websocket they
never re-send an unchanged state, so a refused presence stays refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection

from accord.v1 import leases_pb2, sessions_pb2
from tests.harness import AUTH_REQUIRED, Coordinator, until
from tests.sessions.test_y_websocket import WAIT, Agent, _greeted, awareness_message, ws_auth

CLIENT_ID = 5151
# Well under the presence lease's TTL (10 s), which bounded the wait before.
TAKEOVER_SECONDS = 4.0


def state_of(read: sessions_pb2.SessionsReadResponse, client_id: int) -> dict[str, str] | None:
    for presence in read.presence:
        if presence.client_id == client_id:
            state: dict[str, str] = json.loads(presence.state_json)
            return state
    return None


async def announce(socket: ClientConnection, client_id: int, clock: int, state: str) -> None:
    """Send an awareness state and wait until the replica has handled it (it echoes each
    awareness message once it has stored it, or refused it)."""
    message = awareness_message(client_id, clock, state)
    await socket.send(message)
    async with asyncio.timeout(WAIT):
        while await socket.recv() != message:
            pass


async def presence_events(
    agent: Agent, name: str
) -> AsyncIterator[sessions_pb2.SessionsSubscribeResponse]:
    stream = agent.sessions.Subscribe(
        sessions_pb2.SessionsSubscribeRequest(name=name, presence=True), metadata=agent.metadata
    )
    async for event in stream:
        if event.WhichOneof("event") == "presence":
            yield event


async def test_presence_follows_its_agent_to_another_replica_after_a_crash(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    doomed, survivor = live_replicas[1], live_replicas[0]
    watcher = Agent(survivor, namespace, "watcher")
    as_ada = ws_auth(namespace, "ada")
    try:
        ada = await _greeted(f"{doomed.ws_url}/{namespace}/room?agent=ada", **as_ada)
        await announce(ada, CLIENT_ID, 1, '{"user": "ada", "on": "A"}')
        read = await until(
            lambda: watcher.read("room"), lambda r: state_of(r, CLIENT_ID) is not None, "presence"
        )
        (old,) = read.presence
        doomed.kill()

        # While the dead replica's lease still holds the client id, another agent claims
        # it: refused, the presence stays ada's.
        as_mallory = ws_auth(namespace, "mallory")
        mallory = await _greeted(f"{survivor.ws_url}/{namespace}/room?agent=mallory", **as_mallory)
        await announce(mallory, CLIENT_ID, 2, '{"user": "mallory"}')
        (kept,) = (await watcher.read("room")).presence
        assert kept == old, "another agent took over ada's awareness client id"

        # Ada's app reconnects to the surviving replica with its client id and a new state.
        events = presence_events(watcher, "room")
        assert (await anext(events)).presence == old  # the current set comes first
        ada = await _greeted(f"{survivor.ws_url}/{namespace}/room?agent=ada", **as_ada)
        await announce(ada, CLIENT_ID, 3, '{"user": "ada", "on": "B"}')
        async with asyncio.timeout(TAKEOVER_SECONDS):
            moved = (await anext(events)).presence
        assert moved.client_id == CLIENT_ID and json.loads(moved.state_json)["on"] == "B"
        assert moved.agent_id == "ada" and moved.lease_id not in (0, old.lease_id)
        await events.aclose()

        # The crashed replica's lease expires later and takes nothing with it.
        async def lease_ids() -> list[int]:
            listed = await watcher.leases.List(
                leases_pb2.LeasesListRequest(), metadata=watcher.metadata, timeout=WAIT
            )
            return [lease.id for lease in listed.leases]

        await until(lease_ids, lambda ids: old.lease_id not in ids, "the old lease to end", 30)
        assert state_of(await watcher.read("room"), CLIENT_ID) == {"user": "ada", "on": "B"}
        await mallory.close()
        await ada.close()
    finally:
        await watcher.channel.close()


@pytest.mark.parametrize(
    ("holder", "claimant"),
    [
        ("ada", "mallory"),
        pytest.param(
            "",
            "",
            marks=pytest.mark.skipif(AUTH_REQUIRED, reason="anonymous sockets need auth off"),
        ),
    ],
    ids=["agents", "anonymous"],
)
async def test_other_agents_cannot_take_a_client_id(
    replicas: list[Coordinator], namespace: str, holder: str, claimant: str
) -> None:
    """Only the agent that holds a client id may move it to a new connection, and a
    connection without an agent id can never take one (anyone could be that)."""
    watcher = Agent(replicas[0], namespace, "watcher")
    try:
        session = f"room-{holder or 'anonymous'}"
        first = await _greeted(
            f"{replicas[0].ws_url}/{namespace}/{session}?agent={holder}",
            **ws_auth(namespace, holder),
        )
        await announce(first, CLIENT_ID, 1, '{"user": "first"}')
        second = await _greeted(
            f"{replicas[1].ws_url}/{namespace}/{session}?agent={claimant}",
            **ws_auth(namespace, claimant),
        )
        await announce(second, CLIENT_ID, 2, '{"user": "second"}')
        read = await watcher.read(session)
        assert state_of(read, CLIENT_ID) == {"user": "first"}, (holder, claimant)
        await first.close()
        await second.close()
    finally:
        await watcher.channel.close()
