"""A real executor process for the effect ledger's fault tests: takes a lease, begins one
effect and prints `proceed CLAIM LEASE` (or the answer it got instead); then on each
stdin line tries to complete it and prints `completed`, `replayed` or `refused REASON
HOLDER_LEASE` (the lease that holds the effect now, from the refusal's details)."""

from __future__ import annotations

import asyncio
import sys

from accord.client import AccordError, AsyncClient
from accord.v1 import effects_pb2

TOOL = "payments.charge"
ARGUMENTS = b'{"amount":1250,"currency":"EUR","to":"acct-0042"}'
SUMMARY = "charge 12.50 EUR to acct-0042"
RESULT = b'{"charge":"by the first executor"}'


async def main(address: str, namespace: str, key: str, run_id: str, ttl: int) -> None:
    async with AsyncClient(
        [address], agent_id="executor", namespace=namespace, timeout=5
    ) as accord:
        lease = await accord.leases.grant(ttl=ttl)
        what = effects_pb2.Intent(tool=TOOL, arguments=ARGUMENTS, summary=SUMMARY)
        begun = await accord.effects.begin(key, run_id, what, lease=lease)
        if begun.outcome != effects_pb2.BEGIN_OUTCOME_PROCEED:
            print(effects_pb2.BeginOutcome.Name(begun.outcome), flush=True)
            return
        print(f"proceed {begun.effect.claim} {lease.id}", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            try:
                done = await accord.effects.complete(
                    key, begun.effect.claim, lease=lease, result=RESULT
                )
                print("replayed" if done.replayed else "completed", flush=True)
            except AccordError as refused:
                holder = next(
                    (
                        d.claimed.lease_id
                        for d in refused.details
                        if isinstance(d, effects_pb2.Effect)
                    ),
                    0,
                )
                print(f"refused {refused.reason} {holder}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5], int(sys.argv[5])))
