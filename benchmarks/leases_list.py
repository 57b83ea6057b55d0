"""Leases.List over thousands of leases beside another client's Gets, side by side with the
same Gets on an idle replica, in one run.

    python -m benchmarks.leases_list [--leases 3000] [--listers 4] [--seconds 5]

One namespace holds --leases leases. Phase "idle": one client Gets a key back to back.
Phase "listing": the same Gets while --listers clients each list every lease (all
pages) back to back. Targets (issue 13): a full listing of 3,000 leases under 1.5 s, and
the other client's Get p99 under 200 ms while it runs; reported with the ratio of the
Get p99 under listing to the idle Get p99.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from accord.client import AsyncClient
from benchmarks.common import measured, ratios_vs_peer, report
from tests.harness import start_coordinator, start_etcd

GETS = "Get beside listings"


async def _gets(client: AsyncClient, until: float, out: list[float]) -> None:
    while time.perf_counter() < until:
        sent = time.perf_counter()
        await client.kv.get("k")
        out.append(time.perf_counter() - sent)


async def run(leases: int, listers: int, seconds: float, out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-"))
    etcd = start_etcd(base)
    coordinator = start_coordinator(
        base, "bench", [etcd.endpoint], extra_args=["--log-level", "warning"]
    )
    owner = AsyncClient([coordinator.address], agent_id="owner", namespace="leases", token="")
    reader = AsyncClient([coordinator.address], agent_id="reader", namespace="other", token="")
    listing = [
        AsyncClient([coordinator.address], agent_id=f"lister-{i}", namespace="leases", token="")
        for i in range(listers)
    ]
    try:
        for start in range(0, leases, 200):
            count = min(200, leases - start)
            await asyncio.gather(
                *(owner.leases.grant(ttl=600, keepalive=False) for _ in range(count))
            )
        await reader.kv.put("k", b"v")

        idle: list[float] = []
        started = time.perf_counter()
        await _gets(reader, started + seconds, idle)
        idle_result = measured("Get, idle replica", 1, time.perf_counter() - started, idle, GETS)

        loaded: list[float] = []
        list_times: list[float] = []
        stop = time.perf_counter() + seconds

        async def lister(client: AsyncClient) -> None:
            while time.perf_counter() < stop:
                sent = time.perf_counter()
                listed = await client.leases.list()
                list_times.append(time.perf_counter() - sent)
                assert len(listed) == leases

        started = time.perf_counter()
        await asyncio.gather(_gets(reader, stop, loaded), *(lister(c) for c in listing))
        elapsed = time.perf_counter() - started
        loaded_result = measured(f"Get, {listers} clients listing", 1, elapsed, loaded, GETS)
        list_result = measured(f"List of {leases} leases", listers, elapsed, list_times, "List")
    finally:
        for client in (owner, reader, *listing):
            await client.close()
        coordinator.terminate()
        etcd.kill()

    summary: dict[str, object] = {
        "Get p99 listing/idle ratio": round(loaded_result.p99_ms / idle_result.p99_ms, 2),
        "full listing p99 s (target < 1.5)": round(list_result.p99_ms / 1000, 3),
        "Get p99 ms while listing (target < 200)": loaded_result.p99_ms,
    }
    results = [idle_result, loaded_result, list_result]
    report(
        "Leases.List beside another client's Get (benchmarks/leases_list.py)",
        results,
        summary,
        out,
        ratios_vs_peer(results, idle_result.name, metric="p99 ms"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=3000)
    parser.add_argument("--listers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/leases_list.json"))
    args = parser.parse_args()
    asyncio.run(run(args.leases, args.listers, args.seconds, args.out))


if __name__ == "__main__":
    main()
