"""`accord mcp` starts over stdio and names itself."""

from __future__ import annotations

from tests.harness import Coordinator
from tests.mcp.harness import stdio_session


async def test_stdio_server_starts(replicas: list[Coordinator], namespace: str) -> None:
    async with stdio_session([r.address for r in replicas], namespace) as mcp:
        assert mcp.server_info is not None and mcp.server_info.name == "accord"
        await mcp.list_tools()
