"""Conditional writes against `accord serve --workers 2` beside the same command with one
worker, over one etcd, in one run: what a second replica process on the same port buys.

    python -m benchmarks.workers [--seconds 3] [--clients 64] [--rounds 3]

Every client owns one key and loops: compare-and-set it on its last mod_revision, with a
request_id (as Accord's client sends). Each client has a connection of its own (gRPC's
subchannels are otherwise shared by every channel of a process, so one process would
reach one worker): the kernel spreads connections, not calls, over the workers, and the
summary says how many answers each worker gave. Rounds alternate the two commands and
the ratio reported is the median of the per-round ratios (the machine is shared).
CPU per CAS is given per process: the workers' together, etcd, and this client.

Error handling: a failed call stops the run (it raises); the processes started here are
stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc

from accord.v1 import kv_pb2, kv_pb2_grpc
from benchmarks.common import CpuMeter, Result, closed_loop, ratios_vs_peer, report
from tests.harness import Coordinator, start_coordinator, start_etcd

VALUE = b"x" * 64
WORKLOAD = "CAS, a connection per client"
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own


def mode(workers: int) -> str:
    return f"accord --workers {workers}"


class Load:
    """The clients of one command: their channels and the replicas that answered."""

    def __init__(self, coordinator: Coordinator, namespace: str) -> None:
        self.coordinator = coordinator
        self.meta = (("accord-namespace", namespace), ("accord-agent-id", "bench"))
        self.channels: list[grpc.aio.Channel] = []
        self.answered: Counter[str] = Counter()

    async def make_op(self, i: int) -> Callable[[], Awaitable[None]]:
        channel = grpc.aio.insecure_channel(self.coordinator.address, options=OPTIONS)
        self.channels.append(channel)
        kv = kv_pb2_grpc.KVStub(channel)
        key = f"k{i}"
        put = await kv.Put(kv_pb2.PutRequest(key=key, value=VALUE), metadata=self.meta)
        last = put.kv.mod_revision

        async def cas() -> None:
            nonlocal last
            done = await kv.Put(
                kv_pb2.PutRequest(
                    key=key,
                    value=VALUE,
                    precondition=kv_pb2.Precondition(mod_revision=last),
                    request_id=uuid.uuid4().hex,
                ),
                metadata=self.meta,
                timeout=30,
            )
            last = done.kv.mod_revision
            self.answered[done.header.replica] += 1

        return cas

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def _pids(coordinator: Coordinator) -> list[int]:
    return list(coordinator.workers().values()) or [coordinator.pid]


async def run(seconds: float, clients: int, rounds: int, out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-workers-"))
    etcd = start_etcd(base)
    started: list[Coordinator] = []
    try:
        for workers in (1, 2):
            args = ["--log-level", "warning", *(["--workers", str(workers)] if workers > 1 else [])]
            started.append(start_coordinator(base, f"w{workers}", [etcd.endpoint], args, ws=False))
        results: list[Result] = []
        per_round: list[float] = []
        answered: dict[str, Counter[str]] = {}
        for _ in range(rounds):
            this_round: list[Result] = []
            for workers, coordinator in zip((1, 2), started, strict=True):
                load = Load(coordinator, f"bench-{uuid.uuid4().hex[:8]}")
                pids = {f"coordinator {i}": pid for i, pid in enumerate(_pids(coordinator))}
                try:
                    with CpuMeter({**pids, "etcd": etcd.pid, "client": os.getpid()}) as cpu:
                        result = await closed_loop(mode(workers), clients, seconds, load.make_op)
                finally:
                    await load.close()
                used = cpu.per_op_us(result.ops)
                result.workload = WORKLOAD
                result.cpu_us_per_op = {
                    "coordinator": sum(v for k, v in used.items() if k.startswith("coordinator")),
                    "etcd": used["etcd"],
                    "client": used["client"],
                }
                answered.setdefault(mode(workers), Counter()).update(load.answered)
                this_round.append(result)
            ratio = ratios_vs_peer(this_round, mode(1))[0].value
            per_round.append(ratio)
            print(f"round: {mode(2)} / {mode(1)} = {ratio}", flush=True)
            results += this_round
        median = round(statistics.median(per_round), 3)
        ratios = [replace(r, value=median) for r in ratios_vs_peer(results[-2:], mode(1))]
        summary: dict[str, object] = {
            "per-round ratios": per_round,
            "answers per replica": {m: dict(c) for m, c in answered.items()},
            "CPU us/CAS per process": {
                f"{r.name} (round {i // 2 + 1})": r.cpu_us_per_op for i, r in enumerate(results)
            },
        }
        report(f"Workers: CAS @{clients}, {seconds:g} s x {rounds} rounds", results, summary, out,
               ratios)  # fmt: skip
    finally:
        for coordinator in started:
            coordinator.terminate()
        etcd.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/workers.json"))
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.clients, args.rounds, args.out))


if __name__ == "__main__":
    main()
