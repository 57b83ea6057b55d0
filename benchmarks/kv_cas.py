"""Conditional writes through Accord vs the same conditional write sent straight to etcd,
and the floor (an empty grpc.aio call of the same size), side by side in one run; and
Accord with auth required (a bearer token on every call) beside Accord with auth off.

    python -m benchmarks.kv_cas [--seconds 5] [--clients 1,16,64]

Every client owns one key and loops: compare-and-set it on its last mod_revision. The
Accord side uses the public AsyncClient (which adds a request_id, so every write is also
idempotent), one client shared by every caller as in an agent runtime: batched (the
default: calls made while others are in flight share KV.Batch messages) and unbatched
(one call per operation). The etcd side sends Txn(compare mod_revision, put) on a grpc.aio
channel; its physical ceiling is the same CAS hand-batched into nested Txns (one etcd
call carrying up to 100 callers' CASes, two calls in flight).
The auth-required replica is a second coordinator over the same etcd (its own --root),
whose cluster admin `accord auth bootstrap` made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from aetcd.rpc import rpc_pb2 as rpc
from aetcd.rpc import rpc_pb2_grpc as rpc_grpc

from accord.client import AsyncClient, Expect
from benchmarks.common import (
    CpuMeter,
    Ratio,
    Result,
    RssSampler,
    closed_loop,
    ratios_vs_peer,
    report,
)
from tests.harness import free_port, start_coordinator, start_etcd, wait_for_port

VALUE = b"x" * 64
DIRECT = "etcd CAS, direct"
ACCORD = "accord CAS, batched (shared client)"
UNBATCHED = "accord CAS, unbatched"
CEILING = "etcd CAS, hand-batched nested Txns (ceiling)"
FLOOR = "floor: empty grpc.aio echo"


async def run(seconds: float, concurrency: list[int], out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-"))
    etcd = start_etcd(base)
    coordinator = start_coordinator(
        base, "bench", [etcd.endpoint], extra_args=["--log-level", "warning"]
    )
    made = subprocess.run(
        [sys.executable, "-m", "accord.coordinator", "auth", "bootstrap", "--etcd",
         etcd.endpoint, "--root", "bench-auth", "--principal", "bench", "-o", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    secured = start_coordinator(
        base,
        "bench-auth",
        [etcd.endpoint],
        extra_args=["--log-level", "warning", "--auth", "required", "--root", "bench-auth"],
        ws=False,
    )
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("echo_server.py")), str(echo_port)]
    )
    wait_for_port(echo_port, 10, echo)
    etcd_channel = grpc.aio.insecure_channel(etcd.endpoint)
    kv = rpc_grpc.KVStub(etcd_channel)
    echo_channel = grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}")
    echo_call = echo_channel.unary_unary("/bench.Echo/Echo")
    client = AsyncClient([coordinator.address], agent_id="bench", namespace="bench", token="")
    unbatched = AsyncClient(
        [coordinator.address], agent_id="bench", namespace="bench", token="", batching=False
    )
    ceiling = NestedTxns(kv)
    secured_client = AsyncClient(
        [secured.address], namespace="bench", token=json.loads(made.stdout)["secret"]
    )
    results: list[Result] = []
    cpu: dict[tuple[str, int], dict[str, int]] = {}
    peak_rss = 0.0
    try:
        for clients in concurrency:

            async def etcd_op(i: int, clients: int = clients) -> Callable[[], Awaitable[None]]:
                key = f"direct/{clients}/{i}".encode()
                put = await kv.Put(rpc.PutRequest(key=key, value=VALUE))
                state = {"rev": put.header.revision}

                async def op() -> None:
                    response = await kv.Txn(
                        rpc.TxnRequest(
                            compare=[
                                rpc.Compare(
                                    key=key,
                                    target=rpc.Compare.MOD,
                                    result=rpc.Compare.EQUAL,
                                    mod_revision=state["rev"],
                                )
                            ],
                            success=[
                                rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=VALUE))
                            ],
                        ),
                        timeout=10,
                    )
                    assert response.succeeded
                    state["rev"] = response.header.revision

                return op

            def accord_cas(
                accord: AsyncClient, clients: int = clients
            ) -> Callable[[int], Awaitable[Callable[[], Awaitable[None]]]]:
                async def prepare(i: int) -> Callable[[], Awaitable[None]]:
                    key = f"cas/{clients}/{i}"
                    state = {"rev": (await accord.kv.put(key, VALUE)).revision}

                    async def op() -> None:
                        written = await accord.kv.put(
                            key, VALUE, expect=Expect(mod_revision=state["rev"])
                        )
                        state["rev"] = written.revision

                    return op

                return prepare

            async def ceiling_op(i: int, clients: int = clients) -> Callable[[], Awaitable[None]]:
                key = f"nested/{clients}/{i}".encode()
                state = {
                    "rev": (await kv.Put(rpc.PutRequest(key=key, value=VALUE))).header.revision
                }

                async def op() -> None:
                    state["rev"] = await ceiling.cas(key, state["rev"])

                return op

            async def echo_op(i: int) -> Callable[[], Awaitable[None]]:
                payload = b"k" * 12 + VALUE + b"r" * 32  # about an Accord Put request's size

                async def op() -> None:
                    await echo_call(payload, timeout=10)

                return op

            pids = {
                "bench client": os.getpid(),
                "coordinator": coordinator.pid,
                "coordinator, auth required": secured.pid,
                "etcd": etcd.pid,
                "echo server": echo.pid,
            }
            for name, make in (
                (DIRECT, etcd_op),
                (CEILING, ceiling_op),
                (ACCORD, accord_cas(client)),
                (UNBATCHED, accord_cas(unbatched)),
                ("accord CAS, auth required", accord_cas(secured_client)),
                (FLOOR, echo_op),
            ):
                with RssSampler(coordinator.pid) as rss, CpuMeter(pids) as meter:
                    result = await closed_loop(name, clients, seconds, make)
                result.workload = "CAS"
                results.append(result)
                if name == ACCORD:
                    peak_rss = max(peak_rss, rss.peak)
                cpu[(name, clients)] = result.cpu_us_per_op = {
                    n: us for n, us in meter.per_op_us(result.ops).items() if us
                }
    finally:
        await client.close()
        await unbatched.close()
        await secured_client.close()
        await etcd_channel.close()
        await echo_channel.close()
        echo.kill()
        coordinator.terminate()
        secured.terminate()
        etcd.kill()

    by = {(r.name, r.clients): r for r in results}
    summary: dict[str, object] = {}
    for clients in concurrency:
        direct = by[(DIRECT, clients)]
        accord = by[(ACCORD, clients)]
        floor = by[(FLOOR, clients)]
        summary[f"accord/etcd ratio @{clients}"] = round(accord.ops_per_s / direct.ops_per_s, 2)
        summary[f"accord/floor ratio @{clients}"] = round(accord.ops_per_s / floor.ops_per_s, 2)
        secured_result = by[("accord CAS, auth required", clients)]
        summary[f"auth required/off ratio @{clients}"] = round(
            secured_result.ops_per_s / accord.ops_per_s, 2
        )
        # The unary path's targets: the coordinator's CPU per unbatched write near an
        # empty grpc.aio server call's; etcd's per write well below a direct CAS's.
        alone = cpu.get((UNBATCHED, clients), {})
        if alone.get("coordinator") and cpu.get((FLOOR, clients), {}).get("echo server"):
            summary[f"unbatched coordinator CPU / echo server CPU @{clients}"] = round(
                alone["coordinator"] / cpu[(FLOOR, clients)]["echo server"], 2
            )
        for mode in (UNBATCHED, ACCORD):
            mine = cpu.get((mode, clients), {}).get("etcd")
            theirs = cpu.get((DIRECT, clients), {}).get("etcd")
            if mine and theirs:
                summary[f"etcd CPU per op, {mode} / direct @{clients}"] = round(mine / theirs, 2)
    summary["coordinator peak RSS MB"] = round(peak_rss, 1)
    for (name, clients), per_op in cpu.items():
        summary[f"CPU us/op, {name} @{clients}"] = per_op
    # Every mode vs direct etcd (the targets: batched >= 2x at 64 callers, p50
    # <= 2x at 1), and vs the floor a Python gRPC call sets.
    ratios = ratios_vs_peer(results, DIRECT, [ACCORD], targets={64: 2.0})
    others = sorted({r.name for r in results} - {DIRECT, FLOOR, ACCORD})
    ratios += ratios_vs_peer(results, DIRECT, others)
    ratios += [
        r
        for r in ratios_vs_peer(results, DIRECT, [ACCORD], metric="p50 ms", targets={1: 2.0})
        if r.clients == 1
    ]
    ratios += [
        r
        for r in ratios_vs_peer(results, DIRECT, [UNBATCHED], metric="p50 ms", targets={1: 2.0})
        if r.clients == 1
    ]
    ratios += ratios_vs_peer(results, FLOOR, [ACCORD])
    ratios += cpu_ratios(results)
    title = "Accord conditional writes vs etcd (benchmarks/kv_cas.py)"
    report(title, results, summary, out, ratios)


def cpu_ratios(results: list[Result]) -> list[Ratio]:
    """The unary path's targets as ratios: the coordinator's CPU per unbatched write over
    an empty grpc.aio server call's (<= 1.3), etcd's per write over a direct CAS's (<= 0.3
    unbatched)."""
    cpu = {(r.name, r.clients): r.cpu_us_per_op for r in results}
    found: list[Ratio] = []
    for clients in sorted({r.clients for r in results}):

        def per_op(mode: str, process: str, clients: int = clients) -> int:
            return cpu.get((mode, clients), {}).get(process, 0)

        pairs = [
            (UNBATCHED, "coordinator", FLOOR, "echo server", 1.3),
            (UNBATCHED, "etcd", DIRECT, "etcd", 0.3),
            (ACCORD, "etcd", DIRECT, "etcd", None),
        ]
        for mode, process, peer, peer_process, target in pairs:
            if per_op(mode, process) and per_op(peer, peer_process):
                found.append(
                    Ratio(
                        "CAS, CPU per op", f"{mode}: {process}", f"{peer}: {peer_process}",
                        "CPU us/op", round(per_op(mode, process) / per_op(peer, peer_process), 3),
                        clients, higher_is_better=False, target=target,
                    )
                )  # fmt: skip
    return found


class NestedTxns:
    """CASes sent straight to etcd, coalesced by hand: while two etcd calls are out, new
    CASes queue, and each call carries up to 100 of them as nested Txns (etcd's limit is
    128 operations per transaction). What no coordinator can beat on the same machine."""

    def __init__(self, kv: rpc_grpc.KVStub, max_in_flight: int = 2, max_batch: int = 100) -> None:
        self._kv = kv
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._queue: list[tuple[bytes, int, asyncio.Future[int]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def cas(self, key: bytes, revision: int) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((key, revision, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[bytes, int, asyncio.Future[int]]]) -> None:
        try:
            outer = rpc.TxnRequest(
                success=[
                    rpc.RequestOp(
                        request_txn=rpc.TxnRequest(
                            compare=[
                                rpc.Compare(
                                    key=key,
                                    target=rpc.Compare.MOD,
                                    result=rpc.Compare.EQUAL,
                                    mod_revision=revision,
                                )
                            ],
                            success=[
                                rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=VALUE))
                            ],
                        )
                    )
                    for key, revision, _ in batch
                ]
            )
            response = await self._kv.Txn(outer, timeout=10)
            for (_, _, future), inner in zip(batch, response.responses, strict=True):
                assert inner.response_txn.succeeded
                future.set_result(response.header.revision)
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._in_flight -= 1
            self._kick()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kv_cas.json"))
    args = parser.parse_args()
    asyncio.run(run(args.seconds, [int(c) for c in args.clients.split(",")], args.out))


if __name__ == "__main__":
    main()
