"""Leases and locks through MCP, over stdio and streamable HTTP: every lease and lock tool
driven; two scripted agents coordinate through MCP alone, and the one that stalls past
its lease gets its fenced write refused as a tool result; a deadlock between two MCP
sessions comes back to its victim as a readable result; a session that ends gives its
locks back at once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from accord.client import AsyncClient
from tests.harness import Coordinator, make_client, token_for, until
from tests.mcp.conftest import DEV_TOKEN, Agents, both
from tests.mcp.harness import HttpServer, http_session, stdio_server_pid, structured


async def test_lease_and_lock_tools(agents: Agents, key: Callable[[str], str]) -> None:
    lock = key("lock")
    async with both(agents, "alice", "bob") as (alice, bob):
        status = structured(await alice.call_tool("accord_leases_status", {}))
        assert status["has_lease"] is False
        lease = structured(await alice.call_tool("accord_leases_start", {"ttl_seconds": 10}))
        assert lease["started"] is True and lease["ttl_seconds"] == 10
        again = structured(await alice.call_tool("accord_leases_start", {"ttl_seconds": 10}))
        assert again == {**lease, "started": False}

        got = structured(await alice.call_tool("accord_locks_acquire", {"name": lock}))
        assert got["lease_id"] == lease["lease_id"] and got["token"] > 0

        busy = await bob.call_tool("accord_locks_acquire", {"name": lock})
        assert busy.is_error
        refusal = structured(busy)
        assert refusal["reason"] == "WOULD_BLOCK"
        assert [h["agent_id"] for h in refusal["wait"]["holders"]] == ["alice"]
        timed_out = structured(
            await bob.call_tool("accord_locks_acquire", {"name": lock, "wait_seconds": 0.5})
        )
        assert timed_out["reason"] == "LOCK_TIMEOUT"
        assert [h["agent_id"] for h in timed_out["wait"]["holders"]] == ["alice"]

        described = structured(await alice.call_tool("accord_locks_describe", {"name": lock}))
        assert described["i_hold_it"] is True
        assert [h["token"] for h in described["holders"]] == [got["token"]]
        assert described["waiters"] == []  # the timed-out wait left the queue
        blocked = structured(await bob.call_tool("accord_locks_why_blocked", {"name": lock}))
        assert blocked["blocked"] is True and blocked["waiting"] is False
        assert [h["agent_id"] for h in blocked["holders"]] == ["alice"]

        # bob queues; while he waits, his own session explains why
        waiting = asyncio.create_task(
            bob.call_tool("accord_locks_acquire", {"name": lock, "wait_seconds": 30})
        )
        why = await until(
            lambda: bob.call_tool("accord_locks_why_blocked", {"name": lock}),
            lambda r: structured(r)["waiting"],
            "bob queued",
        )
        assert structured(why)["position"] == 0
        assert structured(why)["my_waits"][0]["holder_agent"] == "alice"
        assert structured(why)["cycle"] == []
        assert structured(why)["graph_complete"] is True
        status = structured(await alice.call_tool("accord_leases_status", {}))
        assert status["alive"] is True and status["locks"] == [lock]

        released = structured(await alice.call_tool("accord_locks_release", {"name": lock}))
        assert released["was_holding"] is True
        assert not (await waiting).is_error
        mine = structured(await bob.call_tool("accord_locks_describe", {"name": lock}))
        assert mine["i_hold_it"] is True
        again = structured(await alice.call_tool("accord_locks_release", {"name": lock}))
        assert again["was_holding"] is False

        ended = structured(await bob.call_tool("accord_leases_end", {}))
        assert ended["ended"] is True and ended["released_locks"] == [lock]
        free = structured(await alice.call_tool("accord_locks_describe", {"name": lock}))
        assert free["holders"] == []
        ended = structured(await bob.call_tool("accord_leases_end", {}))
        assert ended["ended"] is False


async def _holders(client: AsyncClient, lock: str) -> list[str]:
    state, _ = await client.locks.describe(lock)
    return [h.agent_id for h in state.holders]


async def test_a_stalled_agent_gets_its_fenced_write_refused(
    agents: Agents, replicas: list[Coordinator], key: Callable[[str], str]
) -> None:
    """Alice and Bob share one document under one lock. Alice stalls past her lease (her
    MCP server frozen with SIGSTOP over stdio; her lease revoked from outside over HTTP,
    where one server process serves both); Bob takes the lock and writes; Alice's write
    under the lock she lost is refused as FENCED, naming Bob, and changes nothing."""
    lock, doc = key("doc-lock"), key("doc")
    observer = make_client([r.address for r in replicas], agents.namespace, agent="alice")
    async with observer, both(agents, "alice", "bob") as (alice, bob):
        await alice.call_tool("accord_leases_start", {"ttl_seconds": 2})
        mine = structured(await alice.call_tool("accord_locks_acquire", {"name": lock}))
        first = await alice.call_tool(
            "accord_memory_put", {"key": doc, "value": "alice v1", "lock": lock}
        )
        assert not first.is_error
        not_mine = structured(
            await bob.call_tool("accord_memory_put", {"key": doc, "value": "x", "lock": lock})
        )
        assert not_mine["reason"] == "NOT_HOLDING"

        pid = stdio_server_pid(agents.namespace, "alice") if agents.server is None else 0
        if pid:
            os.kill(pid, signal.SIGSTOP)
        else:
            await observer.leases.revoke(int(mine["lease_id"], 16))
        try:
            got = structured(
                await bob.call_tool("accord_locks_acquire", {"name": lock, "wait_seconds": 30})
            )
            assert got["token"] > mine["token"]
            written = structured(
                await bob.call_tool(
                    "accord_memory_put", {"key": doc, "value": "bob v2", "lock": lock}
                )
            )
        finally:
            if pid:
                os.kill(pid, signal.SIGCONT)

        stale = await alice.call_tool(
            "accord_memory_put", {"key": doc, "value": "alice v2", "lock": lock}
        )
        assert stale.is_error
        refusal = structured(stale)
        assert refusal["reason"] == "FENCED"
        assert refusal["fence"]["lock"] == lock
        assert refusal["fence"]["your_token"] == mine["token"]
        assert [h["agent_id"] for h in refusal["fence"]["holders_now"]] == ["bob"]
        assert "acquire it anew" in refusal["what_to_do"]
        now = await observer.kv.get(doc)
        assert now is not None and now.value == b"bob v2"
        assert now.mod_revision == written["revision"]
        status = structured(await alice.call_tool("accord_leases_status", {}))
        assert status["alive"] is False


async def test_a_deadlock_comes_back_to_its_victim_readably(
    agents: Agents, replicas: list[Coordinator], key: Callable[[str], str]
) -> None:
    first, second = key("a"), key("b")
    observer = make_client([r.address for r in replicas], agents.namespace, agent="alice")
    async with observer, both(agents, "alice", "bob") as (alice, bob):
        await alice.call_tool("accord_locks_acquire", {"name": first})
        await bob.call_tool("accord_locks_acquire", {"name": second})
        alice_waits = asyncio.create_task(
            alice.call_tool("accord_locks_acquire", {"name": second, "wait_seconds": 30})
        )
        await until(lambda: observer.locks.describe(second), lambda d: len(d[0].waiters) == 1,
                    "alice queued for the second lock")  # fmt: skip
        bob_waits = asyncio.create_task(
            bob.call_tool("accord_locks_acquire", {"name": first, "wait_seconds": 30})
        )
        done, _ = await asyncio.wait({alice_waits, bob_waits}, return_when="FIRST_COMPLETED")
        victim_result = done.pop().result()
        assert victim_result.is_error
        refusal = structured(victim_result)
        assert refusal["reason"] == "DEADLOCK"
        cycle = refusal["deadlock"]["cycle"]
        assert {(e["waiter_agent"], e["holder_agent"]) for e in cycle} == {
            ("alice", "bob"),
            ("bob", "alice"),
        }
        assert {e["lock"] for e in cycle} == {first, second}
        victim = refusal["deadlock"]["victim_agent"]
        assert "Release what you hold" in refusal["what_to_do"]
        # The victim follows the advice; the other gets its lock.
        victim_mcp, other_task = (alice, bob_waits) if victim == "alice" else (bob, alice_waits)
        held = first if victim == "alice" else second
        await victim_mcp.call_tool("accord_locks_release", {"name": held})
        assert not (await other_task).is_error


async def test_ending_the_session_releases_its_locks_at_once(
    agents: Agents, replicas: list[Coordinator], key: Callable[[str], str]
) -> None:
    lock = key("held")
    observer = make_client([r.address for r in replicas], agents.namespace, agent="bob")
    async with observer:
        async with agents.open("alice") as alice:
            # a long TTL: only the session's end can free the lock within the test
            await alice.call_tool("accord_leases_start", {"ttl_seconds": 600})
            await alice.call_tool("accord_locks_acquire", {"name": lock})
            assert await _holders(observer, lock) == ["alice"]
        await until(lambda: _holders(observer, lock), lambda h: h == [], "the lock freed")


async def test_a_vanished_http_client_loses_its_locks_after_the_idle_timeout(
    replicas: list[Coordinator], workdir: Path, namespace: str, key: Callable[[str], str]
) -> None:
    """The stale-lock case: an HTTP client that vanishes without ending its session (no
    DELETE, its streams closed) keeps its locks only until the session idles out
    (--session-idle-timeout), though its lease's TTL is ten minutes."""
    lock = key("abandoned")
    addresses = [r.address for r in replicas]
    server = HttpServer(
        addresses, namespace, workdir / "mcp-idle.log", ["--session-idle-timeout", "2"]
    )
    observer = make_client(addresses, namespace, agent="bob")
    try:
        async with observer:
            token = token_for(namespace, "alice") or DEV_TOKEN
            async with http_session(server.url, token, "alice", end_session=False) as alice:
                await alice.call_tool("accord_leases_start", {"ttl_seconds": 600})
                await alice.call_tool("accord_locks_acquire", {"name": lock})
                assert await _holders(observer, lock) == ["alice"]
            await until(lambda: _holders(observer, lock), lambda h: h == [], "the lock freed")
    finally:
        server.stop()
