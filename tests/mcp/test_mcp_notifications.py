"""Lease loss pushed to the MCP client: a session holding a lock has its lease revoked
from outside; its client gets a warning message naming the lease and the lock lost, and
resources/updated for both URIs (on a subscriptions/listen stream over stdio, which
speaks 2026-07-28; as plain notifications over HTTP, which speaks the handshake era).
The session keeps the lost grant, so its next fenced write is refused by the service as
FENCED. Ending the lease itself pushes nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from mcp import Client
from mcp_types import LoggingMessageNotification, ResourceUpdatedNotification

from tests.harness import make_client, until
from tests.mcp.conftest import Agents
from tests.mcp.harness import structured


class Inbox:
    """What the server pushed to one MCP client."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.updated: list[str] = []

    async def on_message(self, message: Any) -> None:
        if isinstance(message, LoggingMessageNotification):
            self.messages.append(message.params.data)
        elif isinstance(message, ResourceUpdatedNotification):
            self.updated.append(message.params.uri)

    async def snapshot(self) -> tuple[list[dict[str, Any]], list[str]]:
        return list(self.messages), list(self.updated)


@contextlib.asynccontextmanager
async def listening(
    mcp: Client, agents: Agents, uris: list[str], inbox: Inbox
) -> AsyncIterator[None]:
    """Over stdio (2026-07-28) resource updates come on a subscriptions/listen stream;
    over HTTP (handshake era) they come as notifications, already in the inbox."""
    if agents.transport != "stdio":
        yield
        return
    async with mcp.listen(resource_subscriptions=uris) as subscription:

        async def drain() -> None:
            async for event in subscription:
                inbox.updated.append(event.uri)  # type: ignore[union-attr]

        task = asyncio.create_task(drain())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_lease_loss_is_pushed_to_the_client(
    agents: Agents, key: Callable[[str], str]
) -> None:
    lock = key("lock")
    inbox = Inbox()
    async with (
        agents.open("alice", message_handler=inbox.on_message) as mcp,
        make_client(agents.addresses, agents.namespace, agent="alice") as plain,
    ):
        lease = structured(await mcp.call_tool("accord_leases_start", {"ttl_seconds": 10}))
        acquired = await mcp.call_tool("accord_locks_acquire", {"name": lock})
        assert not acquired.is_error, acquired.content
        uris = [f"accord://leases/{lease['lease_id']}", f"accord://locks/{lock}"]
        async with listening(mcp, agents, uris, inbox):
            await plain.leases.revoke(int(lease["lease_id"], 16))  # from outside the session
            messages, _ = await until(
                inbox.snapshot,
                lambda seen: bool(seen[0]) and set(uris) <= set(seen[1]),
                "the lease loss pushed",
            )
        (lost,) = messages
        assert lost["event"] == "lease_lost" and lost["lease_id"] == lease["lease_id"]
        assert lost["reason"] == "LEASE_NOT_FOUND" and lost["locks_lost"] == [lock]
        assert "accord_leases_start" in lost["what_to_do"]

        status = structured(await mcp.call_tool("accord_leases_status", {}))
        assert status["alive"] is False
        # The grant is kept: the service refuses the write and says the lock was lost.
        write = await mcp.call_tool(
            "accord_memory_put", {"key": key("k"), "value": "late", "lock": lock}
        )
        assert write.is_error and structured(write)["reason"] == "FENCED"

        # A lease the session ends itself is no loss: nothing more is pushed.
        await mcp.call_tool("accord_leases_start", {"ttl_seconds": 10})
        ended = structured(await mcp.call_tool("accord_leases_end", {}))
        assert ended["ended"] is True
        await mcp.call_tool("accord_leases_status", {})  # a round trip after the end
        assert len(inbox.messages) == 1


async def test_a_broken_lock_is_pushed_while_the_lease_lives(
    agents: Agents, key: Callable[[str], str]
) -> None:
    lock, kept = key("lock"), key("kept")
    inbox = Inbox()
    async with (
        agents.open("alice", message_handler=inbox.on_message) as mcp,
        make_client(agents.addresses, agents.namespace, agent="admin") as admin,
    ):
        await mcp.call_tool("accord_leases_start", {"ttl_seconds": 2})
        for name in (kept, lock):  # kept first: it would be reported first if it were
            acquired = await mcp.call_tool("accord_locks_acquire", {"name": name})
            assert not acquired.is_error, acquired.content
        uris = [f"accord://locks/{lock}"]
        async with listening(mcp, agents, uris, inbox):
            await admin.locks.break_lock(lock)
            messages, _ = await until(
                inbox.snapshot,
                lambda seen: bool(seen[0]) and set(uris) <= set(seen[1]),
                "the broken lock pushed",
            )
        (lost,) = messages
        assert lost["event"] == "lock_lost" and lost["lock"] == lock
        status = structured(await mcp.call_tool("accord_leases_status", {}))
        assert status["alive"] is True and status["locks"] == [kept]  # the other one stays
