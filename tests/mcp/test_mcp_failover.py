"""A replica killed in the middle of an MCP session: the façade's Accord client fails
over to the other replica, the next tool call works, and the session lease (kept alive
through the other replica) still holds its lock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.harness import Coordinator
from tests.mcp.conftest import Agents
from tests.mcp.harness import structured

TTL = 6


async def test_the_next_tool_call_works_after_a_replica_dies(
    agents: Agents, live_replicas: list[Coordinator], key: Callable[[str], str]
) -> None:
    doc, lock = key("doc"), key("lock")
    async with agents.open("alice") as mcp:
        await mcp.call_tool("accord_leases_start", {"ttl_seconds": TTL})
        await mcp.call_tool("accord_locks_acquire", {"name": lock})
        first = structured(
            await mcp.call_tool("accord_memory_put", {"key": doc, "value": "v1", "lock": lock})
        )
        live_replicas[0].kill()
        after = await mcp.call_tool(
            "accord_memory_put",
            {"key": doc, "value": "v2", "lock": lock, "expected_revision": first["revision"]},
        )
        assert not after.is_error, structured(after)
        read = structured(await mcp.call_tool("accord_memory_get", {"key": doc}))
        assert read["value"]["value"] == "v2"
        # past the lease's TTL: it was kept alive through the surviving replica
        await asyncio.sleep(TTL + 2)
        status = structured(await mcp.call_tool("accord_leases_status", {}))
        assert status["alive"] is True and status["locks"] == [lock]
