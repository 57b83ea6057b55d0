"""Accord locks vs the python-etcd3 Lock recipe on the same etcd, deadlock detection
latency, and coordinator memory with many waiting agents, in one run.

    python -m benchmarks.locks [--seconds 5] [--waiters 10,100,1000]
        [--parts throughput,deadlocks,memory]

- uncontended: 16 clients, each its own lock, acquire then release in a loop;
- hand-offs: 8 and 32 clients looping acquire/release on one lock (grants per second);
  the peer is etcd3.Lock (python3-etcd3), each client a thread with its own etcd client,
  as a user of that recipe would run it. The recipe is not fair: a releasing client
  often takes the lock straight back, so its "hand-offs" are mostly not hand-offs; the
  share of grants that went to the previous holder is reported for both. The etcd
  leases the recipe leaves behind are revoked after each of its runs. Also reported:
  etcd's writes (raft proposals committed, from its metrics) per Accord grant;
- deadlock latency: with N other agents waiting on locks, two agents close a cycle; time
  from the closing acquire's call to the victim's DeadlockError (20 rounds);
- memory: coordinator RSS with 1000 agents each keeping a lease alive and waiting on or
  holding a lock, vs its RSS before.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import etcd3

from accord.client import AsyncClient, DeadlockError, Lease
from benchmarks.common import CpuMeter, Result, report, rss_mb
from tests.harness import ETCDCTL, start_coordinator, start_etcd


def repeat_share(order: list[int]) -> float:
    """Of the grants of one lock, the share that went to the client that held it just
    before: 0 for a strict FIFO hand-off between several clients, near 1 when one client
    keeps re-taking the lock while the others starve."""
    again = sum(1 for a, b in itertools.pairwise(order) if a == b)
    return round(again / max(1, len(order) - 1), 3)


def peer_loop(
    endpoint: str, clients: int, seconds: float, shared: bool, order: list[int]
) -> Result:
    """etcd3.Lock from threads; each thread its own client and Lock object."""
    host, port = endpoint.split(":")
    counts = [0] * clients
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        client = etcd3.client(host=host, port=int(port))
        lock = client.lock("bench-shared" if shared else f"bench-{clients}-{i}", ttl=60)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            if lock.acquire(timeout=max(0.1, stop_at - time.perf_counter())):
                latencies.append(time.perf_counter() - started)
                order.append(i)
                counts[i] += 1
                lock.release()
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _result(
        "etcd3.Lock (python3-etcd3)", clients, sum(counts), time.perf_counter() - began, latencies
    )


def revoke_every_lease(endpoint: str) -> int:
    """The recipe takes a new etcd lease on every acquire attempt and never revokes it
    (release only deletes the key); revoke them all, so their expiry a minute later does
    not load etcd during the next measurements. Returns how many there were."""
    listed = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoint}", "lease", "list"],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()[3:]  # "found N leases" then one hex id per line
    host, port = endpoint.split(":")
    client = etcd3.client(host=host, port=int(port))
    try:
        for lease in listed:
            client.revoke_lease(int(lease, 16))
        return len(listed)
    finally:
        client.close()


def etcd_writes(endpoint: str) -> int:
    """Raft proposals etcd has committed (its writes), from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^etcd_server_proposals_committed_total (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


async def accord_loop(
    client: AsyncClient,
    leases: list[Lease],
    seconds: float,
    shared: bool,
    order: list[int] | None = None,
) -> Result:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        name = "bench-shared" if shared else f"bench-{len(leases)}-{i}"
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            grant = await client.locks.acquire(name, leases[i], wait=30)
            latencies.append(time.perf_counter() - started)
            if order is not None:
                order.append(i)
            await client.locks.release(grant)

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(len(leases))))
    return _result(
        "accord Locks", len(leases), len(latencies), time.perf_counter() - began, latencies
    )


def _result(name: str, clients: int, ops: int, seconds: float, latencies: list[float]) -> Result:
    latencies.sort()
    return Result(
        name=name,
        clients=clients,
        ops=ops,
        seconds=round(seconds, 3),
        ops_per_s=round(ops / seconds, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 3) if latencies else 0,
        p99_ms=round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 3)
        if latencies
        else 0,
    )


async def deadlock_latency(client: AsyncClient, others: int, rounds: int) -> list[float]:
    """Latency from the cycle-closing acquire to the victim's error, with `others`
    agents waiting elsewhere (10 waiters per held lock)."""
    leases = [await client.leases.grant(ttl=120) for _ in range(others + others // 10 + 2)]
    holders, waiters, (a, b) = leases[: others // 10], leases[others // 10 : -2], leases[-2:]
    for i, lease in enumerate(holders):
        await client.locks.acquire(f"busy-{others}-{i}", lease)
    waiting = [
        asyncio.create_task(
            client.locks.acquire(f"busy-{others}-{i % max(1, len(holders))}", lease, wait=600)
        )
        for i, lease in enumerate(waiters)
    ]
    await asyncio.sleep(1 + others / 200)  # let every wait reach the coordinator
    samples: list[float] = []
    for r in range(rounds):
        x, y = f"cycle-{others}-{r}-x", f"cycle-{others}-{r}-y"
        await client.locks.acquire(x, a)
        await client.locks.acquire(y, b)
        first = asyncio.create_task(client.locks.acquire(y, a, wait=60))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        try:
            await client.locks.acquire(x, b, wait=60)
        except DeadlockError:
            samples.append(time.perf_counter() - started)
            await client.locks.release(y, b)
            await client.locks.release(await first)
        await client.locks.release(x, a)
    for task in waiting:
        task.cancel()
    for lease in leases:
        await lease.revoke()
    return samples


async def memory_with_waiting_agents(
    client: AsyncClient, pid: int, agents: int
) -> tuple[float, float]:
    before = rss_mb(pid)
    leases = [await client.leases.grant(ttl=120) for _ in range(agents)]
    waits = [
        asyncio.create_task(client.locks.acquire(f"mem-{i % (agents // 10)}", lease, wait=600))
        for i, lease in enumerate(leases)
    ]
    await asyncio.sleep(5)
    during = rss_mb(pid)
    for task in waits:
        task.cancel()
    for lease in leases:
        await lease.revoke()
    return before, during


PARTS = ("throughput", "deadlocks", "memory")


async def run(
    seconds: float, waiter_counts: list[int], agents: int, out: Path, parts: set[str]
) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-locks-"))
    etcd = start_etcd(base)
    coordinator = start_coordinator(
        base, "bench", [etcd.endpoint], extra_args=["--log-level", "warning"]
    )
    results: list[Result] = []
    summary: dict[str, object] = {}
    client = AsyncClient([coordinator.address], agent_id="bench", namespace="bench", timeout=30)
    try:
        throughput = ((16, False), (8, True), (32, True)) if "throughput" in parts else ()
        for clients, shared in throughput:
            label = f"{'hand-offs' if shared else 'uncontended'} @{clients}"
            peer_order: list[int] = []
            accord_order: list[int] = []
            peer = peer_loop(etcd.endpoint, clients, seconds, shared, peer_order)
            summary[f"etcd leases the peer left behind, {label}"] = revoke_every_lease(
                etcd.endpoint
            )
            leases = [await client.leases.grant(ttl=60) for _ in range(clients)]
            writes = etcd_writes(etcd.endpoint)
            with CpuMeter({"coordinator": coordinator.pid, "etcd": etcd.pid}) as meter:
                ours = await accord_loop(client, leases, seconds, shared, accord_order)
            writes = etcd_writes(etcd.endpoint) - writes
            for lease in leases:
                await lease.revoke()
            results += [peer, ours]
            summary[f"accord/etcd3.Lock, {label}"] = round(ours.ops_per_s / peer.ops_per_s, 2)
            summary[f"CPU us/op accord, {label}"] = meter.per_op_us(ours.ops)
            summary[f"etcd writes per grant, accord, {label}"] = round(writes / ours.ops, 2)
            if shared:
                summary[f"grants to the previous holder again, {label}"] = {
                    "etcd3.Lock": repeat_share(peer_order),
                    "accord": repeat_share(accord_order),
                }
        for others in waiter_counts if "deadlocks" in parts else ():
            samples = sorted(await deadlock_latency(client, others, 20))
            summary[f"deadlock detection ms @{others} other waiters"] = {
                "p50": round(statistics.median(samples) * 1000, 1),
                "p99": round(samples[max(0, int(len(samples) * 0.99) - 1)] * 1000, 1),
                "rounds": len(samples),
            }
        if "memory" in parts:
            before, during = await memory_with_waiting_agents(client, coordinator.pid, agents)
            summary["coordinator RSS MB, before"] = round(before, 1)
            summary[f"coordinator RSS MB, {agents} agents leased and waiting"] = round(during, 1)
    finally:
        await client.close()
        coordinator.terminate()
        etcd.kill()
    report("Accord locks (benchmarks/locks.py)", results, summary, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--waiters", default="10,100,1000")
    parser.add_argument("--agents", type=int, default=1000, help="agents for the memory step")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/locks.json"))
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"which to run, of {','.join(PARTS)}"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}; known: {','.join(PARTS)}")
    waiters = [int(w) for w in args.waiters.split(",")]
    asyncio.run(run(args.seconds, waiters, args.agents, args.out, parts))


if __name__ == "__main__":
    main()
