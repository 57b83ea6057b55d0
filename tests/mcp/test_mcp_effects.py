"""The effect ledger through MCP: begin (PROCEED), complete, a retried begin told DONE
with the recorded result, another agent told BUSY after its bounded wait, abort then
PROCEED again, IN_DOUBT once the executor's lease is gone, the run's journal; and the
refusals (no session lease; both a result and an error) that send nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from accord.client import EffectState, NotFoundError, effect_key
from tests.harness import make_client
from tests.mcp.conftest import Agents, both
from tests.mcp.harness import structured

ARGS = {"to": "ops@example.com", "subject": "deploy done"}


async def _call(mcp: Any, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await mcp.call_tool(tool, args)
    assert not result.is_error, result.content
    return structured(result)


async def test_effect_tools_annotations(agents: Agents) -> None:
    async with agents.open("a") as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
    expected = {
        # name: (readOnly, destructive, idempotent)
        "accord_effects_begin": (False, False, True),
        "accord_effects_complete": (False, False, True),
        "accord_effects_abort": (False, False, True),
        "accord_effects_journal": (True, False, True),
    }
    for name, flags in expected.items():
        hints = tools[name].annotations
        assert hints is not None, name
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == flags
        assert tools[name].output_schema is not None, name
    assert set(tools["accord_effects_begin"].input_schema["required"]) == {
        "run_id",
        "step",
        "tool",
        "arguments",
    }


async def test_an_effect_runs_once(agents: Agents) -> None:
    run = f"run-{uuid.uuid4().hex[:8]}"
    step = {"run_id": run, "step": 1, "tool": "send_email", "arguments": ARGS}
    async with (
        both(agents, "alice", "bob") as (alice, bob),
        make_client(agents.addresses, agents.namespace) as plain,
    ):
        # Without a session lease there is nothing for a claim to hang on.
        refused = await alice.call_tool("accord_effects_begin", step)
        assert refused.is_error and structured(refused)["reason"] == "NO_SESSION_LEASE"
        with pytest.raises(NotFoundError):  # nothing was begun
            await plain.effects.get(effect_key(run, 1, "send_email", ARGS))
        for agent in (alice, bob):
            await _call(agent, "accord_leases_start", {"ttl_seconds": 10})

        began = await _call(alice, "accord_effects_begin", step)
        assert began["outcome"] == "PROCEED" and "accord_effects_complete" in began["what_to_do"]
        assert began["key"] == effect_key(run, 1, "send_email", ARGS)
        assert began["effect"]["intent"] == {"tool": "send_email", "arguments": ARGS, "summary": ""}

        # Another agent meanwhile: BUSY after its bounded wait, told to call again.
        busy = await _call(bob, "accord_effects_begin", {**step, "wait_seconds": 0.2})
        assert busy["outcome"] == "BUSY" and busy["effect"]["claimed_by"] == "alice"

        both_given = await alice.call_tool(
            "accord_effects_complete",
            {"key": began["key"], "claim": began["claim"], "result": 1, "error": "x"},
        )
        assert both_given.is_error and structured(both_given)["reason"] == "INVALID_ARGUMENT"
        assert (await plain.effects.get(began["key"])).state == EffectState.RUNNING

        done = await _call(
            alice,
            "accord_effects_complete",
            {
                "key": began["key"],
                "claim": began["claim"],
                "result": {"message_id": "m-1"},
                "compensation_tool": "send_email",
                "compensation_arguments": {"to": "ops@example.com", "subject": "ignore it"},
            },
        )
        assert done["replayed"] is False
        assert done["effect"]["state"] == "SUCCEEDED"
        assert done["effect"]["result"] == {"message_id": "m-1"}
        again = await _call(
            alice,
            "accord_effects_complete",
            {"key": began["key"], "claim": began["claim"], "error": "late"},
        )
        assert again["replayed"] is True and again["effect"]["result"] == {"message_id": "m-1"}

        # A retry, or another agent resuming the run: DONE with the recorded result.
        retried = await _call(bob, "accord_effects_begin", step)
        assert retried["outcome"] == "DONE"
        assert retried["effect"]["result"] == {"message_id": "m-1"}
        assert "do not run the tool again" in retried["what_to_do"]

        # Step 2: begun, then given up without an outcome: the next begin may run it.
        second = {**step, "step": 2}
        claimed = await _call(bob, "accord_effects_begin", second)
        aborted = await _call(
            bob,
            "accord_effects_abort",
            {"key": claimed["key"], "claim": claimed["claim"], "reason": "smtp refused"},
        )
        assert aborted["state"] == "ABORTED"
        retaken = await _call(alice, "accord_effects_begin", second)
        assert retaken["outcome"] == "PROCEED" and retaken["effect"]["attempts"] == 2

        # Its executor's lease ends without an outcome: IN_DOUBT for the next agent.
        await _call(alice, "accord_leases_end", {})
        in_doubt = await _call(bob, "accord_effects_begin", second)
        assert in_doubt["outcome"] == "IN_DOUBT" and "reconciled=true" in in_doubt["what_to_do"]
        reclaimed = await _call(bob, "accord_effects_begin", {**second, "reconciled": True})
        assert reclaimed["outcome"] == "PROCEED"

        journal = await _call(bob, "accord_effects_journal", {"run_id": run})
        assert journal["status"] == "RUNNING" and journal["succeeded"] == 1
        assert [e["key"] for e in journal["journal"]] == [began["key"], claimed["key"]]
        assert journal["resume_at"] == claimed["key"]
        assert journal["journal"][0]["compensation"]["tool"] == "send_email"

        stored = await plain.effects.get(began["key"])
        assert stored.attempts == 1 and stored.outcome.success == b'{"message_id":"m-1"}'
