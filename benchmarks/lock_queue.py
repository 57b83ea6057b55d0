"""The cost of a long lock queue: enqueue and hand-off per waiter, at two queue lengths
side by side in one run.

    python -m benchmarks.lock_queue [--waiters 100,1000] [--permits P]

For each N: one lease holds the lock; N other leases each start an acquire (one client,
N concurrent calls); "enqueue" is the time until all N entries are in etcd. Then the
holder releases and every waiter releases as soon as it is granted: "hand-off" is the
time until the last one is granted. Reported per waiter, and as the ratio of the
per-waiter times at the largest and smallest N: about 1 when each waiter costs O(1)
(or O(log n)), about N_max/N_min when each costs O(n) (the whole queue read per
enqueue or wake). With --permits, the queue is a semaphore's: P leases hold it, and a
release lets one waiter in. Also reported: etcd's Range and Txn calls per waiter (from
its metrics), about constant when a release costs the waiters it does not concern
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
import urllib.request
from pathlib import Path

from accord.client import AsyncClient, Grant, Lease
from accord.coordinator.substrate.keyspace import Keyspace
from benchmarks.common import CpuMeter, Result, report
from tests.harness import EtcdMember, start_coordinator, start_etcd
from tests.harness.waits import until

NAMESPACE = "bench-queue"


def queued(etcd: EtcdMember, lock: str) -> int:
    # The queue's prefix ends in a NUL, which a command line cannot carry; no lock name
    # here is a prefix of another's.
    prefix = Keyspace("accord").locks_prefix(NAMESPACE) + lock.encode()
    out = etcd.ctl("get", prefix.decode(), "--prefix", "--keys-only", "--limit", "1", "-w", "json")
    return int(json.loads(out).get("count", 0))


def etcd_reads(etcd: EtcdMember) -> int:
    """Range and Txn calls etcd has answered, from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://{etcd.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(
        r'^grpc_server_handled_total\{[^}]*grpc_method="(?:Range|Txn)"[^}]*\} (\S+)$', text, re.M
    )
    return sum(int(float(n)) for n in found)


async def one_queue(
    client: AsyncClient, etcd: EtcdMember, waiters: int, permits: int
) -> tuple[float, float]:
    """(enqueue seconds, hand-off seconds) for waiters behind one holder (a semaphore's
    `permits` holders)."""
    lock = f"queue-{waiters}."
    holders = list(
        await asyncio.gather(*(client.leases.grant(ttl=600) for _ in range(max(1, permits))))
    )
    leases: list[Lease] = list(
        await asyncio.gather(*(client.leases.grant(ttl=600) for _ in range(waiters)))
    )
    grants = [await client.locks.acquire(lock, h, permits=permits) for h in holders]

    async def wait_then_release(lease: Lease) -> float:
        got: Grant = await client.locks.acquire(lock, lease, permits=permits, wait=600)
        at = time.perf_counter()
        await client.locks.release(got)
        return at

    started = time.perf_counter()
    tasks = [asyncio.create_task(wait_then_release(lease)) for lease in leases]

    async def count() -> int:
        return queued(etcd, lock)

    await until(count, lambda n: n >= waiters + len(holders), f"{waiters} waiters queued", 600)
    enqueue = time.perf_counter() - started
    released = time.perf_counter()
    for grant in grants:
        await client.locks.release(grant)
    granted_at = await asyncio.gather(*tasks)
    hand_off = max(granted_at) - released
    for lease in [*holders, *leases]:
        await lease.revoke()
    return enqueue, hand_off


async def run(counts: list[int], permits: int, out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-queue-"))
    etcd = start_etcd(base)
    coordinator = start_coordinator(
        base, "bench", [etcd.endpoint], extra_args=["--log-level", "warning"]
    )
    client = AsyncClient([coordinator.address], agent_id="bench", namespace=NAMESPACE, timeout=600)
    results: list[Result] = []
    summary: dict[str, object] = {}
    per_waiter: dict[int, tuple[float, float]] = {}
    try:
        for n in counts:
            reads = etcd_reads(etcd)
            with CpuMeter({"coordinator": coordinator.pid, "etcd": etcd.pid}) as meter:
                enqueue, hand_off = await one_queue(client, etcd, n, permits)
            reads = etcd_reads(etcd) - reads
            summary[f"{n} waiters: etcd Range+Txn calls per waiter"] = round(reads / n, 1)
            per_waiter[n] = (enqueue / n, hand_off / n)
            summary[f"{n} waiters: enqueue s"] = round(enqueue, 2)
            summary[f"{n} waiters: hand-off s"] = round(hand_off, 2)
            summary[f"{n} waiters: CPU us per waiter"] = meter.per_op_us(n)
            for what, seconds in (("enqueue", enqueue), ("hand-off", hand_off)):
                ms = seconds / n * 1000
                results.append(
                    Result(
                        f"{what}, {n} waiters",
                        n,
                        n,
                        round(seconds, 3),
                        round(n / seconds, 1),
                        round(ms, 3),
                        round(ms, 3),
                    )
                )
        small, large = min(counts), max(counts)
        for i, what in enumerate(("enqueue", "hand-off")):
            summary[
                f"per-waiter {what} time, {large} vs {small} waiters (1: O(1), "
                f"{large // small}: O(n))"
            ] = round(per_waiter[large][i] / per_waiter[small][i], 2)
    finally:
        await client.close()
        coordinator.terminate()
        etcd.kill()
    what = f"semaphore of {permits} permits" if permits else "lock"
    report(f"Accord {what} queue cost (benchmarks/lock_queue.py)", results, summary, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", default="100,1000")
    parser.add_argument("--permits", type=int, default=0, help="0: a lock; else a semaphore")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    name = f"lock_queue_semaphore{args.permits}" if args.permits else "lock_queue"
    out = args.out or Path(f"benchmarks/results/{name}.json")
    asyncio.run(run([int(n) for n in args.waiters.split(",")], args.permits, out))


if __name__ == "__main__":
    main()
