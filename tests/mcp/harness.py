"""MCP clients of `accord mcp` for the tests: the SDK's own Client, over stdio (spawning
`accord mcp` as a subprocess, as an agent host does) or over streamable HTTP (an
`accord mcp --transport http` process started per test module)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.session import MessageHandlerFnT
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from tests.harness import free_port, wait_for_port

ACCORD = [sys.executable, "-m", "accord.coordinator"]


def stdio_params(
    addresses: list[str], namespace: str, *, token: str = "", agent: str = ""
) -> StdioServerParameters:
    env = {"ACCORD_TOKEN": token} if token else {}
    agent_args = ["--agent", agent] if agent else []
    return StdioServerParameters(
        command=ACCORD[0],
        args=[*ACCORD[1:], "mcp", "--addr", ",".join(addresses), "--namespace", namespace,
              *agent_args],
        env=env,
    )  # fmt: skip


def stdio_server_pid(namespace: str, agent: str) -> int:
    """The pid of the `accord mcp` process serving agent in namespace over stdio."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mcp" in argv and namespace.encode() in argv and agent.encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no accord mcp process for {agent} in {namespace}")


@asynccontextmanager
async def stdio_session(
    addresses: list[str],
    namespace: str,
    *,
    token: str = "",
    agent: str = "",
    message_handler: MessageHandlerFnT | None = None,
) -> AsyncIterator[Client]:
    """An MCP session over stdio with its own `accord mcp` process; message_handler gets
    what the server pushes (notifications)."""
    params = stdio_params(addresses, namespace, token=token, agent=agent)
    async with Client(params, message_handler=message_handler) as client:
        yield client


class HttpServer:
    """An `accord mcp --transport http` process."""

    def __init__(
        self, addresses: list[str], namespace: str, log: Path, extra_args: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [*ACCORD, "mcp", "--transport", "http", "--listen", f"127.0.0.1:{self.port}",
             "--addr", ",".join(addresses), "--namespace", namespace, *(extra_args or [])],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_port(self.port, 30.0, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@asynccontextmanager
async def http_session(
    url: str,
    token: str | None,
    agent: str = "",
    message_handler: MessageHandlerFnT | None = None,
    *,
    end_session: bool = True,
) -> AsyncIterator[Client]:
    """An MCP session over streamable HTTP presenting token (None: no header), acting as
    agent (if given); message_handler gets what the server pushes. end_session False:
    leave without ending the session (no DELETE), as a client that crashed does."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if agent:
        headers["Accord-Agent-Id"] = agent
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60.0) as http,
        Client(
            streamable_http_client(url, http_client=http, terminate_on_close=end_session),
            message_handler=message_handler,
        ) as client,
    ):
        yield client


def structured(result: CallToolResult) -> dict[str, Any]:
    """The tool's structured result (what its output schema describes)."""
    if result.structured_content is not None:
        return dict(result.structured_content)
    text = "".join(getattr(c, "text", "") for c in result.content)
    loaded: dict[str, Any] = json.loads(text)
    return loaded
