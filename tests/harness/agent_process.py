"""A real agent process for fault tests: takes a lease and a lock, prints its token,
then on each stdin line tries a fenced write and prints the outcome."""

from __future__ import annotations

import asyncio
import sys

from accord.client import AsyncClient, FencedError, LeaseNotFoundError


async def main(address: str, namespace: str, ttl: int) -> None:
    async with AsyncClient(
        [address], agent_id="paused-agent", namespace=namespace, timeout=5
    ) as accord:
        lease = await accord.leases.grant(ttl=ttl)
        grant = await accord.locks.acquire("shared-doc", lease)
        print(f"token {grant.token}", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            try:
                await accord.kv.put("doc", b"written by the paused agent", fence=grant)
                print("written", flush=True)
            except (FencedError, LeaseNotFoundError) as refused:
                print(f"refused {refused.reason}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
