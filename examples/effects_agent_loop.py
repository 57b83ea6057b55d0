"""A plain asyncio agent loop whose tool calls happen exactly once.

The loop asks its planner (a fixed plan here, standing in for an LLM) for the next tool
call, makes it through the effect ledger, and feeds the result back. Run it twice with
the same run id, or kill it half-way and run it again: the second run gets each
completed call's recorded result instead of calling the tool again. The payment API
sees each charge once even when the process dies between charging and recording,
because the effect key is also the API's idempotency key (and the reconcile callback
looks the charge up by it).

    python examples/effects_agent_loop.py 127.0.0.1:50051 order-1182
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

from accord.client import AsyncClient, EffectRun, FoundOutcome, RunStatus, Undo

JSONObject = dict[str, Any]


@dataclass
class PaymentsAPI:
    """The external system: charges keyed by the caller's idempotency key (as payment APIs
    offer), so a charge sent twice under one key is made once."""

    charges: dict[str, JSONObject] = field(default_factory=dict)
    refunds: list[str] = field(default_factory=list)
    receipts: list[str] = field(default_factory=list)

    async def charge(self, amount_cents: int, idempotency_key: str) -> JSONObject:
        if idempotency_key not in self.charges:
            charge_id = f"ch_{len(self.charges) + 1}"
            self.charges[idempotency_key] = {"id": charge_id, "amount_cents": amount_cents}
        return self.charges[idempotency_key]

    def find(self, idempotency_key: str) -> JSONObject | None:
        return self.charges.get(idempotency_key)


def refund_of(charge: Any, _arguments: Any) -> Undo:
    """The compensation a successful charge registers: refund it."""
    return Undo("refund", {"charge_id": charge["id"]})


def next_call(history: list[Any]) -> tuple[str, JSONObject] | None:
    """The planner: the next tool call given the results so far (None: done)."""
    if not history:
        return "charge", {"amount_cents": 4200}
    if len(history) == 1:
        return "send_receipt", {"to": "ana@example.com", "charge_id": history[0]["id"]}
    return None


async def agent_loop(accord: AsyncClient, run_id: str, payments: PaymentsAPI) -> list[Any]:
    """Run the plan to its end as run run_id; the results of its tool calls, in order."""

    def reconcile(key: str) -> FoundOutcome | None:
        # An in-doubt step: the previous executor died before recording its outcome.
        # The payments API knows whether the charge went through, by the same key.
        found = payments.find(key)
        return FoundOutcome(found) if found is not None else None

    async with await accord.leases.grant(ttl=15) as lease:
        run = EffectRun(accord.effects, run_id, lease, reconcile=reconcile)

        @run.tool(undo=refund_of)
        async def charge(amount_cents: int, effect_key: str = "") -> JSONObject:
            return await payments.charge(amount_cents, idempotency_key=effect_key)

        @run.tool()
        async def send_receipt(to: str, charge_id: str) -> str:
            payments.receipts.append(f"{to}: {charge_id}")
            return "sent"

        tools = {"charge": charge, "send_receipt": send_receipt}
        history: list[Any] = []
        while (call := next_call(history)) is not None:
            name, arguments = call
            history.append(await tools[name](**arguments))
        await accord.effects.set_run_status(run_id, RunStatus.FINISHED)
        return history


async def main(address: str, run_id: str) -> None:
    payments = PaymentsAPI()
    async with AsyncClient(address, agent_id="checkout-agent", namespace="examples") as accord:
        print(await agent_loop(accord, run_id, payments))
        print(await agent_loop(accord, run_id, payments), "(again: nothing ran twice)")
    print(f"charges made: {len(payments.charges)}, receipts sent: {len(payments.receipts)}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
