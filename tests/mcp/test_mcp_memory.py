"""Memory tools through MCP, over stdio and streamable HTTP: every tool driven, and each
refusal a tool result carrying what the agent needs to act on it."""

from __future__ import annotations

import base64
from collections.abc import Callable

from tests.mcp.conftest import Agents, both
from tests.mcp.harness import structured


async def test_put_get_list_history_delete(agents: Agents, key: Callable[[str], str]) -> None:
    k = key("plan")
    async with agents.open("alice") as mcp:
        created = structured(
            await mcp.call_tool(
                "accord_memory_put", {"key": k, "value": "step 1", "must_not_exist": True}
            )
        )
        assert created["value"]["value"] == "step 1"
        read = structured(await mcp.call_tool("accord_memory_get", {"key": k}))
        assert read["found"] is True
        assert read["value"]["revision"] == created["revision"]
        assert read["value"]["written_by"]["agent_id"] == "alice"

        second = structured(
            await mcp.call_tool(
                "accord_memory_put",
                {"key": k, "value": "step 2", "expected_revision": created["revision"]},
            )
        )
        assert second["revision"] > created["revision"]

        listed = structured(
            await mcp.call_tool("accord_memory_list", {"prefix": k.split("/")[0] + "/"})
        )
        assert [v["key"] for v in listed["values"]] == [k]
        assert listed["values"][0]["value"] == "step 2"

        history = structured(await mcp.call_tool("accord_memory_history", {"key": k}))
        assert [c["value"]["value"] for c in history["changes"]] == ["step 2", "step 1"]
        assert history["changes"][0]["changed_by"]["agent_id"] == "alice"

        gone = structured(
            await mcp.call_tool("accord_memory_delete", {"key": k, "request_id": "del-1"})
        )
        assert gone["deleted"] is True and gone["previous"]["value"] == "step 2"
        again = structured(
            await mcp.call_tool("accord_memory_delete", {"key": k, "request_id": "del-1"})
        )
        assert again["replayed"] is True
        missing = structured(await mcp.call_tool("accord_memory_get", {"key": k}))
        assert missing == {"key": k, "found": False, "value": None}


async def test_a_stale_write_returns_the_current_value_revision_and_writer(
    agents: Agents, key: Callable[[str], str]
) -> None:
    k = key("doc")
    async with both(agents, "alice", "bob") as (alice, bob):
        first = structured(await alice.call_tool("accord_memory_put", {"key": k, "value": "v1"}))
        by_bob = structured(
            await bob.call_tool(
                "accord_memory_put",
                {"key": k, "value": "bob's", "expected_revision": first["revision"]},
            )
        )
        stale = await alice.call_tool(
            "accord_memory_put",
            {"key": k, "value": "alice's", "expected_revision": first["revision"]},
        )
        assert stale.is_error
        refusal = structured(stale)
        assert refusal["reason"] == "CONDITION_FAILED"
        conflict = refusal["conflict"]
        assert conflict["current_revision"] == by_bob["revision"]
        assert conflict["current"]["value"] == "bob's"
        assert conflict["current"]["written_by"]["agent_id"] == "bob"
        assert "expected_revision" in refusal["what_to_do"]
        # nothing changed
        now = structured(await alice.call_tool("accord_memory_get", {"key": k}))
        assert now["value"]["value"] == "bob's"
        assert now["value"]["revision"] == by_bob["revision"]


async def test_update_compares_by_value(agents: Agents, key: Callable[[str], str]) -> None:
    k = key("counter")
    async with agents.open("alice") as mcp:
        created = structured(
            await mcp.call_tool(
                "accord_memory_update", {"key": k, "expected_value": None, "value": "1"}
            )
        )
        assert created["value"]["value"] == "1"
        bumped = structured(
            await mcp.call_tool(
                "accord_memory_update", {"key": k, "expected_value": "1", "value": "2"}
            )
        )
        assert bumped["revision"] > created["revision"]
        wrong = await mcp.call_tool(
            "accord_memory_update", {"key": k, "expected_value": "1", "value": "3"}
        )
        assert wrong.is_error
        refusal = structured(wrong)
        assert refusal["reason"] == "CONDITION_FAILED"
        assert refusal["conflict"]["current"]["value"] == "2"
        assert refusal["conflict"]["current_revision"] == bumped["revision"]
        now = structured(await mcp.call_tool("accord_memory_get", {"key": k}))
        assert now["value"]["value"] == "2"


async def test_bytes_that_are_not_utf8_travel_as_base64(
    agents: Agents, key: Callable[[str], str]
) -> None:
    k = key("blob")
    raw = b"\xff\x00\xfe"
    async with agents.open("alice") as mcp:
        put = await mcp.call_tool(
            "accord_memory_put",
            {"key": k, "value": base64.b64encode(raw).decode(), "encoding": "base64"},
        )
        assert not put.is_error
        read = structured(await mcp.call_tool("accord_memory_get", {"key": k}))
        assert read["value"]["encoding"] == "base64"
        assert base64.b64decode(read["value"]["value"]) == raw
        bad = await mcp.call_tool(
            "accord_memory_put", {"key": k, "value": "not base64!", "encoding": "base64"}
        )
        assert bad.is_error and structured(bad)["reason"] == "INVALID_ARGUMENT"
        after = structured(await mcp.call_tool("accord_memory_get", {"key": k}))
        assert after["value"]["revision"] == read["value"]["revision"]


async def test_a_retried_put_with_its_request_id_applies_once(
    agents: Agents, key: Callable[[str], str]
) -> None:
    k = key("once")
    async with agents.open("alice") as mcp:
        args = {"key": k, "value": "x", "must_not_exist": True, "request_id": "put-once-1"}
        first = structured(await mcp.call_tool("accord_memory_put", args))
        retry = structured(await mcp.call_tool("accord_memory_put", args))
        assert retry["replayed"] is True and retry["revision"] == first["revision"]
