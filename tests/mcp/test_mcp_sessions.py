"""Collaborative sessions through MCP: apply operations (creating the session), read the
document as JSON, list; a retried apply with its request_id applied once; a bad operation
refused with its index and nothing stored; presence set on the session lease and gone
with it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tests.harness import make_client
from tests.mcp.conftest import Agents
from tests.mcp.harness import structured


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def test_session_tools_schemas_and_annotations(agents: Agents) -> None:
    async with agents.open("a") as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
    expected = {
        # name: (readOnly, destructive, idempotent)
        "accord_sessions_read": (True, False, True),
        "accord_sessions_apply": (False, True, False),
        "accord_sessions_list": (True, False, True),
        "accord_sessions_set_presence": (False, False, True),
        "accord_sessions_presence": (True, False, True),
    }
    for name, flags in expected.items():
        hints = tools[name].annotations
        assert hints is not None, name
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == flags
        assert tools[name].output_schema is not None, name
    schema = tools["accord_sessions_apply"].input_schema
    assert set(schema["required"]) == {"name", "operations"}
    # Each operation kind is its own typed object, told apart by "op".
    kinds = {
        d["properties"]["op"]["const"]
        for d in schema["$defs"].values()
        if "op" in d.get("properties", {})
    }
    assert kinds == {
        "map_set",
        "map_delete",
        "text_insert",
        "text_delete",
        "array_insert",
        "array_delete",
    }


async def test_apply_read_and_list(agents: Agents, key: Callable[[str], str]) -> None:
    name = key("plan")
    request_id = uuid.uuid4().hex
    ops = [
        {"op": "map_set", "root": "tasks", "key": "t1", "value": {"owner": "alice", "done": False}},
        {"op": "map_set", "root": "tasks", "path": ["t1"], "key": "done", "value": True},
        {"op": "text_insert", "root": "notes", "index": 0, "text": "héllo"},
        {"op": "array_insert", "root": "log", "values": ["a", "b"]},
        {"op": "array_insert", "root": "log", "index": 0, "values": [0]},
        {"op": "array_delete", "root": "log", "index": 1},
        {"op": "array_insert", "root": "log", "values": ["c"]},  # index null appends
    ]
    async with (
        agents.open("alice") as mcp,
        make_client(agents.addresses, agents.namespace) as client,
    ):
        applied = await mcp.call_tool(
            "accord_sessions_apply", {"name": name, "operations": ops, "request_id": request_id}
        )
        assert not applied.is_error, _text(applied)
        first = structured(applied)
        assert first["created"] is True and first["changed"] is True

        # The same request_id again: the first answer, nothing inserted twice.
        retried = structured(
            await mcp.call_tool(
                "accord_sessions_apply",
                {"name": name, "operations": ops, "request_id": request_id},
            )
        )
        assert retried["revision"] == first["revision"]

        read = structured(await mcp.call_tool("accord_sessions_read", {"name": name}))
        expected = {
            "tasks": {"t1": {"owner": "alice", "done": True}},
            "notes": "héllo",
            "log": [0, "b", "c"],
        }
        assert read["document"] == expected
        assert read["roots"] == {"tasks": "MAP", "notes": "TEXT", "log": "ARRAY"}
        assert read["created_by"]["agent_id"] == "alice"

        # A bad operation: refused with where it is, and nothing of the call applied.
        before = await client.sessions.read(name)
        refused = await mcp.call_tool(
            "accord_sessions_apply",
            {
                "name": name,
                "operations": [
                    {"op": "map_set", "root": "tasks", "key": "t2", "value": 1},
                    {"op": "text_delete", "root": "tasks", "index": 0, "length": 1},
                ],
            },
        )
        assert refused.is_error and structured(refused)["reason"] == "INVALID_ARGUMENT"
        assert "operations[1]" in structured(refused)["message"]

        # An operation of no known kind is refused by its schema before anything is sent.
        unknown = await mcp.call_tool(
            "accord_sessions_apply",
            {"name": name, "operations": [{"op": "drop_table", "root": "tasks"}]},
        )
        assert unknown.is_error

        # Without create, a missing session is NOT_FOUND.
        missing = await mcp.call_tool(
            "accord_sessions_apply",
            {
                "name": key("nowhere"),
                "create": False,
                "operations": [{"op": "map_set", "root": "m", "key": "k", "value": 1}],
            },
        )
        assert missing.is_error and structured(missing)["reason"] == "NOT_FOUND"

        prefix = name.split("/")[0] + "/"
        listed = structured(await mcp.call_tool("accord_sessions_list", {"prefix": prefix}))
        assert [s["name"] for s in listed["sessions"]] == [name]

        after = await client.sessions.read(name)
        assert after.json == expected and after.state_vector == before.state_vector
        assert [s.name for s in await client.sessions.list(prefix)] == [name]


async def test_presence_hangs_on_the_session_lease(
    agents: Agents, key: Callable[[str], str]
) -> None:
    name = key("doc")
    async with agents.open("alice") as alice, agents.open("bob") as bob:
        await alice.call_tool(
            "accord_sessions_apply",
            {"name": name, "operations": [{"op": "map_set", "root": "m", "key": "k", "value": 1}]},
        )
        refused = await alice.call_tool(
            "accord_sessions_set_presence", {"name": name, "state": {"status": "editing"}}
        )
        assert refused.is_error and structured(refused)["reason"] == "NO_SESSION_LEASE"

        lease = structured(await alice.call_tool("accord_leases_start", {"ttl_seconds": 10}))
        set_ = structured(
            await alice.call_tool(
                "accord_sessions_set_presence", {"name": name, "state": {"status": "editing"}}
            )
        )
        assert set_["agent_id"] == "alice" and f"{set_['lease_id']:x}" == lease["lease_id"]
        seen = structured(await bob.call_tool("accord_sessions_presence", {"name": name}))
        assert [(p["agent_id"], p["state"]) for p in seen["presence"]] == [
            ("alice", {"status": "editing"})
        ]

        # The lease ends: the presence goes with it.
        await alice.call_tool("accord_leases_end", {})
        gone = structured(await bob.call_tool("accord_sessions_presence", {"name": name}))
        assert gone["presence"] == []
