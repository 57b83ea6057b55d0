"""The effect ledger's cost per tool call: Begin + Complete through Accord vs the same two
conditional writes sent straight to etcd, side by side in one run.

    python -m benchmarks.effects [--seconds 3] [--clients 1,16,64]

Every caller is an executor with a lease of its own and loops over fresh tool calls
(a new effect key each time, in a run of its own, a new run every 5,000 calls): Begin
(told PROCEED), then Complete with a 64-byte result. The Accord side uses the public
AsyncClient, one client shared by every caller as in an agent runtime. The etcd side
sends, on a grpc.aio channel:
1. Begin: Txn(create_revision(record) == 0 -> put the record (the intent) on a
   retention lease, put the claim key on the caller's lease);
2. Complete: Txn(create_revision(claim) == Begin's revision -> put the record with its
   outcome on the retention lease, delete the claim).
That is what a careful agent would write without Accord, and what Accord must at least
match (issue 17: >= 1x at 64 callers, thanks to group commit). At 1 caller a tool call's
overhead is the Begin + Complete round trips (target: p99 < 10 ms). The floor is two
empty grpc.aio calls of about the same sizes to a server that does nothing: what two
Python gRPC calls per tool call allow on this machine. Besides CPU per tool call per
process, the summary gives etcd's requests per tool call by method (from its metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from aetcd.rpc import rpc_pb2 as rpc
from aetcd.rpc import rpc_pb2_grpc as rpc_grpc

from accord.client import AsyncClient, Lease
from accord.v1 import effects_pb2
from benchmarks.common import CpuMeter, Ratio, Result, closed_loop, ratios_vs_peer, report
from benchmarks.suites import within
from tests.harness import free_port, start_coordinator, start_etcd, wait_for_port

TOOL = "payments.charge"
ARGUMENTS = json.dumps({"amount": 1250, "currency": "EUR", "to": "acct-0042"}).encode()
RESULT = b'{"charge":"ch_' + b"x" * 48 + b'"}'
INTENT = effects_pb2.Intent(tool=TOOL, arguments=ARGUMENTS)
DIRECT = "etcd, 2 conditional Txns"
ACCORD = "accord Begin + Complete"
FLOOR = "floor: 2 empty grpc.aio calls"
# About the size of a Begin's and a Complete's request.
ECHO_BEGIN = b"k" * 24 + TOOL.encode() + ARGUMENTS + b"r" * 24
ECHO_COMPLETE = b"k" * 24 + RESULT + b"r" * 16
WORKLOAD = "tool call (begin + complete)"
LEASE_TTL = 120
CALLS_PER_RUN = 5_000  # a run holds at most --effects-max-per-run (10,000) effects
Counter = itertools.count


async def run(seconds: float, concurrency: list[int], out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-"))
    etcd = start_etcd(base)
    coordinator = start_coordinator(
        base, "bench", [etcd.endpoint], extra_args=["--log-level", "warning"], ws=False
    )
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("echo_server.py")), str(echo_port)]
    )
    wait_for_port(echo_port, 10, echo)
    echo_channel = grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}")
    echo_call = echo_channel.unary_unary("/bench.Echo/Echo")
    channel = grpc.aio.insecure_channel(etcd.endpoint)
    direct = DirectLedger(rpc_grpc.KVStub(channel), rpc_grpc.LeaseStub(channel))
    client = AsyncClient([coordinator.address], agent_id="bench", namespace="bench", token="")
    results: list[Result] = []
    etcd_calls: dict[tuple[str, int], dict[str, float]] = {}
    pids = {
        "bench client": os.getpid(),
        "coordinator": coordinator.pid,
        "etcd": etcd.pid,
        "echo server": echo.pid,
    }
    try:
        await direct.start()
        for clients in concurrency:
            leases = [await client.leases.grant(ttl=LEASE_TTL) for _ in range(clients)]
            direct_leases = [await direct.grant() for _ in range(clients)]

            async def accord_call(
                i: int, clients: int = clients, leases: list[Lease] = leases
            ) -> Callable[[str, int], Awaitable[None]]:
                async def call(key: str, index: int) -> None:
                    lease, run_id = leases[i], f"run/{clients}/{i}/{index // CALLS_PER_RUN}"
                    began = await client.effects.begin(key, run_id, INTENT, lease=lease)
                    await client.effects.complete(key, began.claim, lease=lease, result=RESULT)

                return call

            async def direct_call(
                i: int, leases: list[int] = direct_leases
            ) -> Callable[[str, int], Awaitable[None]]:
                async def call(key: str, index: int) -> None:
                    claim = await direct.begin(key.encode(), leases[i])
                    await direct.complete(key.encode(), claim)

                return call

            async def floor_call(i: int) -> Callable[[str, int], Awaitable[None]]:
                async def call(key: str, index: int) -> None:
                    await echo_call(ECHO_BEGIN, timeout=10)
                    await echo_call(ECHO_COMPLETE, timeout=10)

                return call

            modes = ((DIRECT, direct_call), (ACCORD, accord_call), (FLOOR, floor_call))
            for name, make in modes:
                before = etcd_requests(etcd.endpoint)
                started = itertools.count()

                async def prepare(
                    i: int,
                    make: Callable[[int], Awaitable[Callable[[str, int], Awaitable[None]]]] = make,
                    started: Counter[int] = started,
                    clients: int = clients,
                ) -> Callable[[], Awaitable[None]]:
                    call = await make(i)

                    async def op() -> None:
                        n = next(started)
                        await call(f"call/{clients}/{i}/{n}", n)

                    return op

                with CpuMeter(pids) as meter:
                    result = await closed_loop(name, clients, seconds, prepare)
                made = next(started)  # tool calls, the warm-up's among them
                after = etcd_requests(etcd.endpoint)
                etcd_calls[(name, clients)] = {
                    method: round((after.get(method, 0) - n) / made, 2)
                    for method, n in before.items()
                    if after.get(method, 0) > n
                }
                result.workload = WORKLOAD
                result.cpu_us_per_op = {
                    n: us for n, us in meter.per_op_us(result.ops).items() if us
                }
                results.append(result)
            for lease in leases:
                await lease.revoke()
            await direct.revoke(direct_leases)
    finally:
        await client.close()
        await channel.close()
        await echo_channel.close()
        echo.kill()
        coordinator.terminate()
        etcd.kill()

    by = {(r.name, r.clients): r for r in results}
    summary: dict[str, object] = {}
    for clients in concurrency:
        mine, theirs = by[(ACCORD, clients)], by[(DIRECT, clients)]
        summary[f"accord/etcd tool calls per s @{clients}"] = round(
            mine.ops_per_s / theirs.ops_per_s, 2
        )
        summary[f"CPU us per tool call, accord @{clients}"] = mine.cpu_us_per_op
        summary[f"CPU us per tool call, direct @{clients}"] = theirs.cpu_us_per_op
        for label, mode in (("accord", ACCORD), ("direct", DIRECT)):
            summary[f"etcd requests per tool call, {label} @{clients}"] = {
                method: n for method, n in etcd_calls[(mode, clients)].items() if n >= 0.01
            }
    ratios = ratios_vs_peer(results, DIRECT, [ACCORD], targets={64: 1.0})
    ratios += ratios_vs_peer(results, DIRECT, [ACCORD], metric="p99 ms")
    ratios += ratios_vs_peer(results, FLOOR, [ACCORD])  # what two Python gRPC calls allow
    if (one := by.get((ACCORD, 1))) is not None:
        summary["overhead per tool call @1, p50 / p99 ms"] = [one.p50_ms, one.p99_ms]
        ratios.append(overhead(one))
    report("Accord effect ledger vs etcd (benchmarks/effects.py)", results, summary, out, ratios)


def etcd_requests(endpoint: str) -> dict[str, float]:
    """Requests etcd has answered so far, by method (Range, Txn, LeaseGrant, ...), from
    its Prometheus metrics."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    pattern = r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)$'
    for method, count in re.findall(pattern, text, re.M):
        found[method] = found.get(method, 0) + float(count)
    return found


def overhead(one: Result) -> Ratio:
    """Issue 17's bound: Begin + Complete add under 10 ms at p99 to a tool call at 1
    caller."""
    return within(WORKLOAD, ACCORD, "p99 ms", one.p99_ms, 10, one.clients)


class DirectLedger:
    """The two conditional writes per tool call, straight to etcd: the record and the
    claim created only if the record is absent, then the outcome written only while the
    claim Begin made still exists."""

    def __init__(self, kv: rpc_grpc.KVStub, leases: rpc_grpc.LeaseStub) -> None:
        self._kv = kv
        self._leases = leases
        self._retention = 0

    async def start(self) -> None:
        self._retention = await self.grant(ttl=7 * 24 * 3600)

    async def grant(self, ttl: int = LEASE_TTL) -> int:
        granted = await self._leases.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=10)
        return int(granted.ID)

    async def revoke(self, lease_ids: list[int]) -> None:
        for lease_id in lease_ids:
            await self._leases.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=10)

    async def begin(self, key: bytes, lease_id: int) -> int:
        record, claim = b"effect/" + key, b"claim/" + key
        response = await self._kv.Txn(
            rpc.TxnRequest(
                compare=[
                    rpc.Compare(key=record, target=rpc.Compare.CREATE, create_revision=0)
                ],
                success=[
                    rpc.RequestOp(request_put=rpc.PutRequest(
                        key=record, value=TOOL.encode() + ARGUMENTS, lease=self._retention)),
                    rpc.RequestOp(request_put=rpc.PutRequest(
                        key=claim, value=str(lease_id).encode(), lease=lease_id)),
                ],
            ),
            timeout=10,
        )  # fmt: skip
        assert response.succeeded
        return int(response.header.revision)

    async def complete(self, key: bytes, claim_revision: int) -> None:
        record, claim = b"effect/" + key, b"claim/" + key
        response = await self._kv.Txn(
            rpc.TxnRequest(
                compare=[
                    rpc.Compare(key=claim, target=rpc.Compare.CREATE,
                                create_revision=claim_revision)
                ],
                success=[
                    rpc.RequestOp(request_put=rpc.PutRequest(
                        key=record, value=TOOL.encode() + ARGUMENTS + RESULT,
                        lease=self._retention)),
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=claim)),
                ],
            ),
            timeout=10,
        )  # fmt: skip
        assert response.succeeded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/effects.json"))
    args = parser.parse_args()
    asyncio.run(run(args.seconds, [int(c) for c in args.clients.split(",")], args.out))


if __name__ == "__main__":
    main()
