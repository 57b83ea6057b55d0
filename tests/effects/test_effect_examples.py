"""The README's integration examples (examples/) run against the real ledger: the plain
asyncio agent loop, and the LangChain tool wrapper (when langchain-core is installed;
it is not one of Accord's dependencies)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from accord.client import AsyncClient, EffectRun, RunStatus, effect_key
from examples.effects_agent_loop import PaymentsAPI, agent_loop
from tests.harness import Coordinator, make_client


async def test_agent_loop_runs_each_call_once(replicas: list[Coordinator], namespace: str) -> None:
    payments = PaymentsAPI()
    async with make_client([replicas[0].address], namespace, agent="checkout") as first:
        results = await agent_loop(first, "order-1182", payments)
    assert results == [{"id": "ch_1", "amount_cents": 4200}, "sent"]
    # Run again (a restarted agent, through the other replica): nothing runs twice.
    async with make_client([replicas[1].address], namespace, agent="checkout") as again:
        assert await agent_loop(again, "order-1182", payments) == results
        progress = await again.effects.progress("order-1182")
    assert len(payments.charges) == 1 and payments.receipts == ["ana@example.com: ch_1"]
    assert progress.run.status == RunStatus.FINISHED and progress.run.compensations == 1
    # The charge went to the API under its effect key: the API's own idempotency key.
    assert list(payments.charges) == [progress.journal[0].key]


@pytest.mark.skipif(
    importlib.util.find_spec("langchain_core") is None,
    reason="langchain-core is not installed (not an Accord dependency): "
    "pip install langchain-core to run the LangChain example's test",
)
async def test_langchain_tool_runs_each_tool_call_once(client: AsyncClient) -> None:
    from examples.effects_langchain_tool import ledger_tool

    run = EffectRun(client.effects, "chat-7", await client.leases.grant(ttl=30))
    charged: list[str] = []

    async def charge(amount_cents: int, currency: str = "eur", effect_key: str = "") -> Any:
        """Charge the customer."""
        charged.append(effect_key)
        return {"charged": amount_cents, "currency": currency}

    tool = ledger_tool(run.tool()(charge))
    # The model is shown the tool's own arguments only.
    schema = tool.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
    assert set(schema["properties"]) == {"amount_cents", "currency"}
    call = {"type": "tool_call", "id": "call_1", "name": "charge", "args": {"amount_cents": 5}}
    first = await tool.ainvoke(call)
    retried = await tool.ainvoke(call)  # a graph resumed from its checkpoint
    assert first.content == retried.content == '{"charged": 5, "currency": "eur"}'
    key = effect_key("chat-7", "tool-call:call_1", "charge", {"amount_cents": 5, "currency": "eur"})
    assert charged == [key]
    await tool.ainvoke({**call, "id": "call_2"})  # another call of the model's: runs
    assert len(charged) == 2
