"""Yjs interop: a real Node app (npm yjs + y-websocket, unmodified) joins the sessions agents
edit over gRPC, through the replicas' y-websocket endpoint; both ways, across replicas,
with awareness as presence, and bad socket input that hurts nobody else."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest
from pycrdt import (
    Doc,
    Text,
    create_awareness_message,
    create_update_message,
    write_message,
    write_var_uint,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from accord.v1 import leases_pb2, sessions_pb2
from tests.harness import REPO, Coordinator, Stubs, eventually, identity, token_env, token_for

NODE_DIR = REPO / "tests" / "node"
WAIT = 15.0  # seconds any single expected change may take before the test fails
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _node_installed() -> None:
    assert shutil.which("node"), "node is needed: deploy/setup.sh --dev installs it"
    assert (NODE_DIR / "node_modules" / "y-websocket").exists(), (
        "run `npm ci` in tests/node first (deploy/setup.sh --dev does)"
    )


class NodeDoc:
    """A Node process running tests/node/ysession.mjs: one Y.Doc on one WebsocketProvider."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            message = json.loads(line)
            future = self._replies.pop(message.get("id", -1), None)
            if future is not None:
                future.set_result(message)
            else:
                await self.events.put(message)

    async def event(self, name: str, timeout: float = WAIT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event.get("event") == name:
                    return event

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next] = future
        self.proc.stdin.write(json.dumps({"id": self._next, "cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(WAIT + 5):
            reply = await future
        assert reply["ok"], reply
        return reply

    async def wait_text(self, contains: str) -> str:
        reply = await self.call("wait_text", contains=contains, ms=int(WAIT * 1000))
        text: str = reply["text"]
        return text


@contextlib.asynccontextmanager
async def node_doc(
    replica: Coordinator, namespace: str, session: str, agent: str = "yjs-app"
) -> AsyncIterator[NodeDoc]:
    """A synced Node Yjs app on replica's y-websocket endpoint."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "ysession.mjs"),
        f"{replica.ws_url}/{namespace}",
        session,
        agent,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **token_env(namespace, agent)},  # ysession.mjs sends ACCORD_TOKEN
    )
    node = NodeDoc(proc)
    try:
        await node.event("synced")
        yield node
    finally:
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.call("close"), 5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        node._reader.cancel()


class Agent(Stubs):
    """A gRPC agent without the Python client: the raw Sessions and Leases stubs."""

    def __init__(self, replica: Coordinator, namespace: str, agent: str = "py-agent") -> None:
        super().__init__(replica.address)
        self.metadata = identity(namespace, agent)

    async def read(self, name: str) -> sessions_pb2.SessionsReadResponse:
        request = sessions_pb2.SessionsReadRequest(name=name)
        answer: sessions_pb2.SessionsReadResponse = await self.sessions.Read(
            request, metadata=self.metadata, timeout=WAIT
        )
        return answer

    async def text(self, name: str) -> str:
        view = json.loads((await self.read(name)).json)
        return str(view.get("text", ""))

    async def insert(self, name: str, index: int, text: str) -> None:
        op = sessions_pb2.Operation(
            root="text", text_insert=sessions_pb2.TextInsert(index=index, text=text)
        )
        await self.sessions.Apply(
            sessions_pb2.SessionsApplyRequest(name=name, operations=[op]),
            metadata=self.metadata,
            timeout=WAIT,
        )

    async def push(self, name: str, update: bytes) -> None:
        await self.sessions.Push(
            sessions_pb2.SessionsPushRequest(name=name, update=update),
            metadata=self.metadata,
            timeout=WAIT,
        )


@pytest.fixture
async def agents(replicas: list[Coordinator], namespace: str) -> AsyncIterator[list[Agent]]:
    """One gRPC agent per replica."""
    made = [Agent(r, namespace) for r in replicas]
    yield made
    for agent in made:
        await agent.channel.close()


async def test_node_edit_reaches_grpc_agent(
    replicas: list[Coordinator], namespace: str, agents: list[Agent]
) -> None:
    async with node_doc(replicas[0], namespace, "notes") as node:
        await node.call("insert", index=0, text="hello from node")
        # The agent on the other replica sees it in a subscription, then in a Read.
        doc: Doc[Any] = Doc()
        stream = agents[1].sessions.Subscribe(
            sessions_pb2.SessionsSubscribeRequest(name="notes"),
            metadata=agents[1].metadata,
            timeout=WAIT,
        )
        async for event in stream:
            doc.apply_update(event.update)
            if "hello from node" in str(doc.get("text", type=Text)):
                stream.cancel()
                break
        assert await agents[1].text("notes") == "hello from node"


async def test_grpc_edits_reach_node(
    replicas: list[Coordinator], namespace: str, agents: list[Agent]
) -> None:
    async with node_doc(replicas[0], namespace, "plan") as node:
        await agents[1].insert("plan", 0, "[ops]")
        assert "[ops]" in await node.wait_text("[ops]")
        # A pycrdt update pushed as is: a Yjs update made by another library.
        local: Doc[Any] = Doc()
        local.get("text", type=Text).insert(0, "<pushed>")
        await agents[0].push("plan", local.get_update())
        text = await node.wait_text("<pushed>")
        assert sorted([text.replace("[ops]", ""), text.replace("<pushed>", "")]) == [
            "<pushed>",
            "[ops]",
        ]
        assert await agents[0].text("plan") == text


async def test_node_apps_on_two_replicas_converge(
    replicas: list[Coordinator], namespace: str, agents: list[Agent]
) -> None:
    async with (
        node_doc(replicas[0], namespace, "pad", agent="ada") as a,
        node_doc(replicas[1], namespace, "pad", agent="bob") as b,
    ):
        await asyncio.gather(
            a.call("insert", index=0, text="from-a "), b.call("insert", index=0, text="from-b ")
        )
        for node in (a, b):
            await node.wait_text("from-a")
            await node.wait_text("from-b")
        final_a, final_b = (await a.call("text"))["text"], (await b.call("text"))["text"]
        assert final_a == final_b
        assert await agents[0].text("pad") == final_a


async def test_awareness_is_presence_and_leaves_with_the_socket(
    replicas: list[Coordinator], namespace: str, agents: list[Agent]
) -> None:
    async with node_doc(replicas[0], namespace, "room", agent="ada") as ada:
        client_id = (await ada.call("awareness", state={"user": "ada", "cursor": 3}))["clientId"]

        def ada_present(read: sessions_pb2.SessionsReadResponse) -> bool:
            return any(
                p.client_id == client_id and json.loads(p.state_json).get("user") == "ada"
                for p in read.presence
            )

        read = await eventually(lambda: agents[1].read("room"), ada_present)
        assert ada_present(read), read.presence
        (mine,) = [p for p in read.presence if p.client_id == client_id]
        assert mine.agent_id == "ada" and mine.lease_id > 0 and mine.clock > 0

        # A gRPC agent's presence reaches the Yjs app as awareness, and so does another
        # Yjs app's (on the other replica).
        grant = await agents[1].leases.Grant(
            leases_pb2.GrantRequest(ttl_seconds=30), metadata=agents[1].metadata, timeout=WAIT
        )
        await agents[1].sessions.SetPresence(
            sessions_pb2.SetPresenceRequest(
                name="room", lease_id=grant.lease.id, state_json='{"user": "planner"}'
            ),
            metadata=agents[1].metadata,
            timeout=WAIT,
        )
        await ada.call("wait_peer", key="user", value="planner", ms=int(WAIT * 1000))
        async with node_doc(replicas[1], namespace, "room", agent="bob") as bob:
            await bob.call("awareness", state={"user": "bob"})
            await ada.call("wait_peer", key="user", value="bob", ms=int(WAIT * 1000))
            await bob.call("wait_peer", key="user", value="ada", ms=int(WAIT * 1000))
        # Bob's socket closed: his presence is gone for everyone (his lease was revoked).
        reply = await ada.call("wait_peer", key="user", value="bob", gone=True, ms=int(WAIT * 1000))
        assert {p["state"]["user"] for p in reply["peers"]} == {"planner"}

    def ada_gone(read: sessions_pb2.SessionsReadResponse) -> bool:
        return not any(p.client_id == client_id for p in read.presence)

    read = await eventually(lambda: agents[0].read("room"), ada_gone)
    assert ada_gone(read), read.presence
    assert {json.loads(p.state_json)["user"] for p in read.presence} == {"planner"}


def awareness_message(client_id: int, clock: int, state: str) -> bytes:
    """A y-protocols awareness message with one client's state."""
    update = b"".join(
        [
            write_var_uint(1),
            write_var_uint(client_id),
            write_var_uint(clock),
            write_message(state.encode()),
        ]
    )
    return create_awareness_message(update)


async def test_socket_presence_ends_with_the_socket_and_no_echo(
    replicas: list[Coordinator], namespace: str, agents: list[Agent]
) -> None:
    """Presence goes with the connection's lease (no goodbye message needed), and a socket
    is not sent back its own updates."""
    url = f"{replicas[1].ws_url}/{namespace}/raw?agent=raw-app"
    socket = await _greeted(url, **ws_auth(namespace, "raw-app"))
    await socket.send(awareness_message(4242, 1, '{"user": "raw"}'))
    read = await eventually(
        lambda: agents[0].read("raw"), lambda r: any(p.client_id == 4242 for p in r.presence)
    )
    (presence,) = read.presence
    assert presence.agent_id == "raw-app" and presence.lease_id > 0

    local: Doc[Any] = Doc()
    local.get("text", type=Text).insert(0, "mine")
    own = local.get_update()
    await socket.send(create_update_message(own))
    await eventually(lambda: agents[0].text("raw"), lambda t: t == "mine")
    await agents[0].insert("raw", 4, "+theirs")
    # Updates reach a socket in revision order: had ours come back, it would come first.
    async with asyncio.timeout(WAIT):
        while True:
            message = await socket.recv()
            assert isinstance(message, bytes)
            if message[:2] == bytes([0, 2]):  # a sync update
                assert own not in message, "the socket was sent its own update back"
                break

    await socket.close()
    read = await eventually(lambda: agents[0].read("raw"), lambda r: not r.presence)
    assert not read.presence, "presence outlived its socket"
    leases = await agents[0].leases.List(
        leases_pb2.LeasesListRequest(), metadata=agents[0].metadata, timeout=WAIT
    )
    assert presence.lease_id not in [lease.id for lease in leases.leases]


async def test_replica_crash_expires_presence_and_the_app_reconnects(
    live_replicas: list[Coordinator], namespace: str, agents: list[Agent]
) -> None:
    """A replica that dies cannot revoke its sockets' leases: they expire. The Yjs app
    keeps editing offline and catches up once the replica is back."""
    async with node_doc(live_replicas[1], namespace, "crash", agent="ada") as ada:
        client_id = (await ada.call("awareness", state={"user": "ada"}))["clientId"]

        def present(read: sessions_pb2.SessionsReadResponse) -> bool:
            return any(p.client_id == client_id for p in read.presence)

        assert present(await eventually(lambda: agents[0].read("crash"), present))
        live_replicas[1].kill()
        await ada.event("closed")
        await ada.call("insert", index=0, text="written offline")
        # The lease expires after its TTL (10 s; etcd may take a little longer).
        read = await eventually(lambda: agents[0].read("crash"), lambda r: not present(r), 30)
        assert not present(read), "presence outlived its crashed replica's lease"

        live_replicas[1].start()
        await ada.event("synced", timeout=30)
        text = await eventually(lambda: agents[0].text("crash"), bool, 30)
        assert text == "written offline"
        assert present(await eventually(lambda: agents[0].read("crash"), present, 30))


SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"  # sync, step 1, a 1-byte empty state vector


def ws_auth(namespace: str, agent: str = "") -> dict[str, Any]:
    """connect() keywords: under ACCORD_TEST_AUTH=required, the token of agent (the one
    in the URL; without one, the default test agent) offered as the WebSocket
    subprotocol; otherwise none."""
    token = token_for(namespace, agent or "tester")
    return {} if token is None else {"subprotocols": [Subprotocol(token)]}


async def _greeted(url: str, **auth: Any) -> ClientConnection:
    """A raw socket past the greeting: our sync step 1, answered by step 2 and step 1."""
    socket = await connect(url, open_timeout=WAIT, **auth)
    await socket.send(SYNC_STEP1_EMPTY)
    for step in (1, 0):
        message = await asyncio.wait_for(socket.recv(), WAIT)
        assert isinstance(message, bytes) and message[:2] == bytes([0, step])
    return socket


async def _closed_with(socket: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(WAIT):
            while True:
                await socket.recv()
    assert closed.value.rcvd is not None, "the server closed with a code and reason"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_bad_socket_input_closes_only_that_socket(
    replicas: list[Coordinator], namespace: str, agents: list[Agent]
) -> None:
    async with node_doc(replicas[0], namespace, "doc") as node:
        await node.call("insert", index=0, text="before")
        await eventually(lambda: agents[0].text("doc"), lambda t: t == "before")
        before = await agents[0].read("doc")
        url = f"{replicas[0].ws_url}/{namespace}/doc"
        bad_messages = {
            "garbage": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            "empty": b"",
            "truncated sync step 1": b"\x00\x00\x05\x01",
            "truncated update": b"\x00\x02\x40\x01\x02",
            "not a Yjs update": b"\x00\x02\x04\xde\xad\xbe\xef",
            "unknown message type": b"\x07\x00",
            "unknown sync type": b"\x00\x09\x00",
            "awareness not JSON": b"\x01\x06\x01\x05\x01\x02{x",
            "trailing bytes": SYNC_STEP1_EMPTY + b"\x00",
        }
        for (what, payload), first in itertools.product(bad_messages.items(), (True, False)):
            # As the very first message, and after a proper greeting.
            auth = ws_auth(namespace)
            socket = (
                await connect(url, open_timeout=WAIT, **auth)
                if first
                else await _greeted(url, **auth)
            )
            await socket.send(payload)
            code, reason = await _closed_with(socket)
            assert code == 4400 and reason, (what, first, code, reason)
        socket = await _greeted(url, **ws_auth(namespace))
        await socket.send("a text frame")
        assert (await _closed_with(socket))[0] == 4400

        # Bad identity or session name: refused with a reason, never served.
        for path, expected in [
            ("/Bad_NS/doc", "namespace"),
            (f"/{namespace}/doc?agent=has%20space", "agent"),
            (f"/{namespace}", "/{namespace}/{session}"),
            (f"/{namespace}/%01ctrl", "name"),
        ]:
            url = f"{replicas[0].ws_url}{path}"
            socket = await connect(url, open_timeout=WAIT, **ws_auth(namespace))
            code, reason = await _closed_with(socket)
            assert code == 4400 and expected in reason, (path, code, reason)

        # The session is unchanged, the Node app still connected, the replica still serves.
        after = await agents[0].read("doc")
        assert after.snapshot == before.snapshot and after.json == before.json
        await node.call("insert", index=6, text=" after")
        await eventually(lambda: agents[1].text("doc"), lambda t: t == "before after")
        assert await agents[1].text("doc") == "before after"
