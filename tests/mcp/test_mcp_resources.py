"""Read-only views as MCP resources: the templates are listed with their MIME type, and
the namespace's locks, one lock (a name with "/"), a vote, a session's JSON and a lease
read as JSON, with the calling session's identity; a missing one is a resource error."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from accord.client import ops
from tests.harness import make_client
from tests.mcp.conftest import Agents

TEMPLATES = {
    "accord://locks{?prefix}",
    "accord://locks/{+name}",
    "accord://votes/{vote_id}",
    "accord://sessions/{+name}",
    "accord://leases/{lease_id}",
}


async def _read(mcp: Any, uri: str) -> Any:
    result = await mcp.read_resource(uri)
    (content,) = result.contents
    assert content.mime_type == "application/json"
    return json.loads(content.text)


async def test_resources_listed_and_read(agents: Agents, key: Callable[[str], str]) -> None:
    main, other, plan = key("repo/main"), key("other"), key("plan")
    prefix = main.split("/")[0] + "/"
    async with make_client(agents.addresses, agents.namespace) as client:
        lease = await client.leases.grant(ttl=30)
        second = await client.leases.grant(ttl=30)
        try:
            grant = await client.locks.acquire(main, lease, wait=5)
            await client.locks.try_acquire(other, second)
            vote = await client.votes.propose(
                "Ship?", ["yes", "no"], voters=["tester"], voting_period=300
            )
            await client.sessions.open(plan)
            await client.sessions.apply(plan, ops.map_set("tasks", "t1", "todo"))
            async with agents.open("a") as mcp:
                templates = (await mcp.list_resource_templates()).resource_templates
                assert {t.uri_template for t in templates} == TEMPLATES
                assert {t.mime_type for t in templates} == {"application/json"}

                listed = await _read(mcp, "accord://locks")
                assert {main, other} <= {lock["name"] for lock in listed["locks"]}
                narrowed = await _read(mcp, f"accord://locks?prefix={prefix}")
                assert sorted(lock["name"] for lock in narrowed["locks"]) == sorted([main, other])

                one = await _read(mcp, f"accord://locks/{main}")
                assert [(h["agent_id"], h["token"]) for h in one["holders"]] == [
                    ("tester", grant.token)
                ]

                got = await _read(mcp, f"accord://votes/{vote.id}")
                assert got["status"] == "OPEN" and got["question"] == "Ship?"
                assert "0 of 1 voters" in got["explanation"]

                doc = await _read(mcp, f"accord://sessions/{plan}")
                assert doc["document"] == {"tasks": {"t1": "todo"}}

                held = await _read(mcp, f"accord://leases/{lease.id:x}")
                assert held["lease_id"] == f"{lease.id:x}" and held["locks"] == [main]

                with pytest.raises(MCPError) as missing:
                    await mcp.read_resource("accord://votes/no-such-vote")
                assert "NOT_FOUND" in missing.value.error.message
        finally:
            await lease.revoke()
            await second.revoke()
