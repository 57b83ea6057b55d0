"""Fixtures for the MCP façade: `agents` opens MCP sessions over stdio or streamable HTTP
(the tests that take it run once per transport), each session acting as the agent it
names (under ACCORD_TEST_AUTH=required, with that agent's token)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.session import MessageHandlerFnT

from tests.harness import Coordinator, token_for
from tests.mcp.harness import HttpServer, http_session, stdio_session

# Any bearer token gets past the façade over HTTP; the service ignores it with auth off.
DEV_TOKEN = "dev-token"


@dataclass
class Agents:
    """Opens MCP sessions in one namespace over one transport."""

    transport: str
    namespace: str
    addresses: list[str]
    server: HttpServer | None

    def token(self, agent: str) -> str:
        return token_for(self.namespace, agent) or (DEV_TOKEN if self.server else "")

    def open(
        self, agent: str, message_handler: MessageHandlerFnT | None = None
    ) -> AbstractAsyncContextManager[Client]:
        """A session acting as agent; message_handler gets what the server pushes."""
        if self.server is None:
            return stdio_session(
                self.addresses,
                self.namespace,
                token=self.token(agent),
                agent=agent,
                message_handler=message_handler,
            )
        return http_session(self.server.url, self.token(agent), agent, message_handler)


@pytest.fixture(scope="module")
def http_namespace() -> str:
    return f"m-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def http_server(
    replicas: list[Coordinator], http_namespace: str, workdir: Path
) -> Iterator[HttpServer]:
    server = HttpServer([r.address for r in replicas], http_namespace, workdir / "mcp-http.log")
    yield server
    server.stop()


@pytest.fixture(params=["stdio", "http"])
def agents(request: pytest.FixtureRequest, replicas: list[Coordinator], namespace: str) -> Agents:
    addresses = [r.address for r in replicas]
    if request.param == "stdio":
        return Agents("stdio", namespace, addresses, None)
    server: HttpServer = request.getfixturevalue("http_server")
    return Agents("http", request.getfixturevalue("http_namespace"), addresses, server)


@pytest.fixture
def key() -> Callable[[str], str]:
    """Keys unique to the test (the HTTP server's namespace is the module's)."""
    prefix = uuid.uuid4().hex[:8]
    return lambda name: f"{prefix}/{name}"


@asynccontextmanager
async def both(agents: Agents, a: str, b: str) -> AsyncIterator[tuple[Client, Client]]:
    async with agents.open(a) as first, agents.open(b) as second:
        yield first, second
