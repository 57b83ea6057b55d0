"""Accord votes vs the same work done straight on etcd, side by side in one run.

    python -m benchmarks.votes [--rounds 20] [--seconds 5] [--concurrency 1,16,64]
                               [--electorates 2000,50] [--watcher-procs 2]
    python -m benchmarks.votes --quick      # a few seconds: only checks it all works

Processes: one etcd, two coordinator replicas (A and B), this driver, and the watcher
processes (this file again, --watcher-procs of them, 2 by default) that hold the watch
streams. Every clock is time.perf_counter (CLOCK_MONOTONIC, shared between processes).
They all share the machine's CPUs, whose count is printed with the results.

1. Decision fan-out: per round, a vote of 5 voters (MAJORITY of the weight cast, a one
   hour deadline) is proposed; the watcher processes open 100 Votes.Watch streams, each
   on its own gRPC channel and TCP connection, alternating between replica A and replica
   B (50 each), and wait for every stream's first `state` message. Two ballots for "yes"
   go to replica A; once every stream has shown both, the driver takes t0 and sends the
   decisive third "yes" (MAJORITY becomes certain: 3 of 5). Each stream stamps the
   arrival of its `decision` message; latency = arrival - t0, so it includes storing the
   ballot, reading the tally, writing the decision and the watch delivery. (The arrival
   of the decisive ballot's own event is reported too, as a breakdown.)
   Anchor, alternating round by round with the above: 100 etcd Watch streams (own
   channels and connections, raw etcd gRPC stubs) on a fresh key, then t0 and one Put
   straight to etcd; latency = the event's arrival - t0.
2. Ballot throughput: closed loops of 1, 16, 64 in-flight Casts to replica A (raw Votes
   stubs, one channel, a fresh request_id per Cast as the Python client sends them), every
   ballot from a distinct voter of a large electorate. The rule is MAJORITY of the weight
   cast with two options and voters alternating between them, and each vote takes at most
   electorate - 1 ballots: with a voter still missing, neither option can be certain to
   exceed half of the weight, so no vote decides early and every Cast is a plain ballot
   (allow_change would also keep votes open, but adds a read per Cast). A new vote is
   proposed in the background when the current one is half full (its cost is in the
   CPU figures, not in any ballot's latency). One run per electorate size: a replica's
   work per ballot grows with it, so 2000 and 50 voters are both measured by default.
   Anchor: the same ballots (a serialized Ballot, as the replica stores it) written by
   the same number of in-flight workers on one channel straight to etcd, each as a Txn:
   the vote's record unchanged since created (mod_revision == create revision) and the
   ballot's key absent (version == 0), then put the ballot.
   Reported: ballots/s, p50/p99 latency, accord/direct ratios, and CPU microseconds per
   ballot of every process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from aetcd.rpc import rpc_pb2 as rpc
from aetcd.rpc import rpc_pb2_grpc as rpc_grpc

from accord.client import AsyncClient, VoteStatus
from accord.client.votes import AsyncVotes
from accord.v1 import votes_pb2, votes_pb2_grpc
from benchmarks.common import CpuMeter, Result
from tests.harness import Coordinator, EtcdMember, start_coordinator, start_etcd

WATCHERS = 100
FANOUT_VOTERS = 5
FANOUT_TARGET_P99_MS = 50.0
THROUGHPUT_TARGET_RATIO = 1.0  # issue #14: ballots/s @64 >= 1x direct
COLLECT_SECONDS = 10.0
HOUR_MS = 3600 * 1000
OPTIONS = ("yes", "no")
# Each channel its own subchannel pool: its own TCP connection, as separate clients have.
SEPARATE = [("grpc.use_local_subchannel_pool", 1)]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def metadata(namespace: str, agent: str) -> tuple[tuple[str, str], ...]:
    return (("accord-agent-id", agent), ("accord-namespace", namespace))


def vote_spec(voters: list[str]) -> votes_pb2.VoteSpec:
    return votes_pb2.VoteSpec(
        question="Ship it?",
        options=list(OPTIONS),
        electorate=votes_pb2.Electorate(
            voters=votes_pb2.Voters(voters=[votes_pb2.Voter(agent_id=v, weight=1) for v in voters])
        ),
        rule=votes_pb2.Rule(kind=votes_pb2.RULE_KIND_MAJORITY),
        timeout_ms=HOUR_MS,
    )


# --- the watcher process ---------------------------------------------------------------


class Round:
    """One round's streams in the watcher process: readiness, ballots seen, arrivals."""

    def __init__(self, count: int) -> None:
        self.ready = [False] * count
        self.ballots = [0] * count
        self.arrivals: list[float | None] = [None] * count
        self.last_ballot: list[float | None] = [None] * count
        self.errors: list[str] = []
        self.changed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.calls: list[Any] = []

    def note(self) -> None:
        self.changed.set()

    async def until(self, check: Callable[[], bool], timeout: float) -> bool:
        deadline = time.perf_counter() + timeout
        while not check():
            if self.errors:
                raise RuntimeError(f"a watch stream failed: {self.errors[0]}")
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True

    def stop(self) -> None:
        for call in self.calls:
            call.cancel()
        for task in self.tasks:
            task.cancel()


class WatcherProcess:
    """Holds watchers first..first+count-1: a channel each to a replica (alternating by
    index) and a channel each to etcd; driven by one command per line on stdin,
    answering one line on stdout."""

    def __init__(
        self, replicas: list[str], etcd: str, namespace: str, first: int, count: int
    ) -> None:
        self.namespace = namespace
        self.replica_of = [i % len(replicas) for i in range(first, first + count)]
        self.accord = [
            votes_pb2_grpc.VotesStub(grpc.aio.insecure_channel(replicas[r], options=SEPARATE))
            for r in self.replica_of
        ]
        self.etcd = [
            rpc_grpc.WatchStub(grpc.aio.insecure_channel(etcd, options=SEPARATE))
            for _ in range(count)
        ]
        self.first = first
        self.count = count
        self.round: Round | None = None

    async def accord_stream(self, i: int, vote_id: str, state: Round) -> None:
        call = self.accord[i].Watch(
            votes_pb2.VotesWatchRequest(vote_id=vote_id),
            metadata=metadata(self.namespace, f"watcher-{self.first + i:03d}"),
        )
        try:
            async for event in call:
                now = time.perf_counter()
                kind = event.WhichOneof("event")
                if kind == "decision":
                    state.arrivals[i] = now
                    state.note()
                    return
                if kind == "state":
                    state.ready[i] = True
                elif kind == "ballot":
                    state.ballots[i] += 1
                    state.last_ballot[i] = now
                state.note()
        except grpc.aio.AioRpcError as exc:
            state.errors.append(f"{exc.code().name}: {exc.details()}")
            state.note()

    async def etcd_stream(self, i: int, key: bytes, state: Round) -> None:
        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=key))
            await asyncio.Event().wait()  # keep the stream open; Round.stop cancels it

        call = self.etcd[i].Watch(requests())
        state.calls.append(call)
        try:
            async for response in call:
                now = time.perf_counter()
                if response.events:
                    state.arrivals[i] = now
                    state.note()
                    return  # the stream is cancelled after the round, not on this path
                if response.created:
                    state.ready[i] = True
                    state.note()
        except grpc.aio.AioRpcError as exc:
            state.errors.append(f"{exc.code().name}: {exc.details()}")
            state.note()

    async def command(self, words: list[str]) -> str:
        if words[0] in ("accord", "etcd"):
            if self.round is not None:
                self.round.stop()
            state = self.round = Round(self.count)
            for i in range(self.count):
                stream = (
                    self.accord_stream(i, words[1], state)
                    if words[0] == "accord"
                    else self.etcd_stream(i, words[1].encode(), state)
                )
                state.tasks.append(asyncio.create_task(stream))
            if not await state.until(lambda: all(state.ready), 60):
                raise RuntimeError(f"only {sum(state.ready)} of {self.count} watches started")
            return "watching"
        assert self.round is not None
        state = self.round
        if words[0] == "ballots":  # every stream has shown this many ballots
            wanted = int(words[1])
            if not await state.until(lambda: min(state.ballots) >= wanted, 30):
                raise RuntimeError("not every stream showed the earlier ballots")
            return "ok"
        if words[0] == "collect":
            await state.until(lambda: None not in state.arrivals, float(words[1]))
            return json.dumps(
                {
                    "arrivals": state.arrivals,
                    "ballots": state.last_ballot,
                    "replica": self.replica_of,
                }
            )
        raise ValueError(f"unknown command {words}")


async def watcher_main(replicas: str, etcd: str, namespace: str, first: str, count: str) -> None:
    process = WatcherProcess(replicas.split(","), etcd, namespace, int(first), int(count))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while words := (await reader.readline()).decode().split():
        if words[0] == "quit":
            break
        print(await process.command(words), flush=True)
    if process.round is not None:
        process.round.stop()


class Watchers:
    """The driver's handle on the watcher processes, which split the WATCHERS between
    them; a command goes to all of them at once."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @classmethod
    async def start(
        cls, replicas: list[str], etcd: str, namespace: str, processes: int
    ) -> Watchers:
        procs = []
        for p in range(processes):
            first, end = WATCHERS * p // processes, WATCHERS * (p + 1) // processes
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "benchmarks.votes",
                    "--watcher-process",
                    ",".join(replicas),
                    etcd,
                    namespace,
                    str(first),
                    str(end - first),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        watchers = cls(procs)
        for said in await asyncio.gather(*(watchers._line(p) for p in procs)):
            if said != "ready":
                raise RuntimeError(f"a watcher process said {said!r}, not 'ready'")
        return watchers

    async def _line(self, proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError("a watcher process exited; see its stderr")
        return line.decode().strip()

    async def _ask_one(self, proc: asyncio.subprocess.Process, words: tuple[str, ...]) -> str:
        assert proc.stdin is not None
        proc.stdin.write((" ".join(words) + "\n").encode())
        await proc.stdin.drain()
        return await self._line(proc)

    async def ask(self, *words: str) -> str:
        answers = await asyncio.gather(*(self._ask_one(p, words) for p in self.procs))
        if words[0] != "collect":
            return answers[0]
        merged: dict[str, list[Any]] = {"arrivals": [], "ballots": [], "replica": []}
        for answer in answers:  # in watcher order: the processes hold consecutive slices
            part = json.loads(answer)
            for field, values in merged.items():
                values.extend(part[field])
        return json.dumps(merged)

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                assert proc.stdin is not None
                proc.stdin.write(b"quit\n")
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- 1. decision fan-out ---------------------------------------------------------------


@dataclass
class FanOutRound:
    side: str
    round: int
    latencies_ms: list[float | None]
    ballot_ms: list[float | None]  # accord: when each stream showed the decisive ballot
    replica: list[int]
    cast_ms: float  # the decisive Cast's (or the Put's) own round trip
    cpu_ms: dict[str, float]


async def fan_out(
    watchers: Watchers,
    replica_a: str,
    etcd_endpoint: str,
    namespace: str,
    rounds: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(replica_a)
    votes = votes_pb2_grpc.VotesStub(channel)
    etcd_channel = grpc.aio.insecure_channel(etcd_endpoint)
    kv = rpc_grpc.KVStub(etcd_channel)
    voters = [f"fan-voter-{i}" for i in range(FANOUT_VOTERS)]
    value = b"d" * 400  # about the size of a decided vote's record
    done: list[FanOutRound] = []
    try:
        for r in range(-1, rounds):  # round -1 warms up every connection; not counted
            vote_id = f"fanout-{r + 1:03d}"
            await votes.Propose(
                votes_pb2.ProposeRequest(
                    vote_id=vote_id, spec=vote_spec(voters), request_id=uuid.uuid4().hex
                ),
                metadata=metadata(namespace, "bench-proposer"),
                timeout=30,
            )
            await watchers.ask("accord", vote_id)
            for voter in voters[:2]:
                answer = await cast(votes, namespace, vote_id, voter, "yes")
                assert answer.status == votes_pb2.VOTE_STATUS_OPEN, "decided too early"
            await watchers.ask("ballots", "2")
            with CpuMeter(pids) as meter:
                t0 = time.perf_counter()
                answer = await cast(votes, namespace, vote_id, voters[2], "yes")
                acked = time.perf_counter()
                arrived = json.loads(await watchers.ask("collect", str(COLLECT_SECONDS)))
            assert answer.status == votes_pb2.VOTE_STATUS_DECIDED, "the third ballot must decide"
            accord = _round("accord", r, t0, acked, arrived, meter)

            key = f"bench-fanout/{r + 1:03d}"
            await watchers.ask("etcd", key)
            with CpuMeter(pids) as meter:
                t0 = time.perf_counter()
                await kv.Put(rpc.PutRequest(key=key.encode(), value=value), timeout=30)
                acked = time.perf_counter()
                arrived = json.loads(await watchers.ask("collect", str(COLLECT_SECONDS)))
            direct = _round("etcd", r, t0, acked, arrived, meter)
            if r >= 0:
                done += [accord, direct]
            print(
                f"  round {r + 1:>2}: p99 accord {_p99(accord):7.2f} ms, "
                f"etcd {_p99(direct):7.2f} ms" + ("  (warm-up)" if r < 0 else ""),
                flush=True,
            )
    finally:
        await channel.close()
        await etcd_channel.close()
    return summarize_fan_out(done)


async def cast(
    votes: votes_pb2_grpc.VotesAsyncStub, namespace: str, vote_id: str, voter: str, choice: str
) -> votes_pb2.CastResponse:
    answer: votes_pb2.CastResponse = await votes.Cast(
        votes_pb2.CastRequest(vote_id=vote_id, choice=choice, request_id=uuid.uuid4().hex),
        metadata=metadata(namespace, voter),
        timeout=30,
    )
    return answer


def _round(
    side: str, r: int, t0: float, acked: float, arrived: dict[str, Any], meter: CpuMeter
) -> FanOutRound:
    return FanOutRound(
        side=side,
        round=r,
        latencies_ms=[None if a is None else (a - t0) * 1000 for a in arrived["arrivals"]],
        ballot_ms=[None if a is None else (a - t0) * 1000 for a in arrived["ballots"]],
        replica=arrived["replica"],
        cast_ms=(acked - t0) * 1000,
        cpu_ms=_cpu_ms(meter),
    )


def _cpu_ms(meter: CpuMeter) -> dict[str, float]:
    """CPU ms per process; the watcher processes summed."""
    out: dict[str, float] = {}
    for name, used in meter.used.items():
        label = "watcher processes" if name.startswith("watcher") else name
        out[label] = out.get(label, 0.0) + used * 1000
    return out


def _p99(r: FanOutRound) -> float:
    return percentile(sorted(x for x in r.latencies_ms if x is not None), 0.99)


def _stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "deliveries": len(values),
        "p50_ms": round(percentile(values, 0.5), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(values[-1], 2) if values else math.nan,
    }


def summarize_fan_out(rounds: list[FanOutRound]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in ("accord", "etcd"):
        mine = [r for r in rounds if r.side == side]
        every = [x for r in mine for x in r.latencies_ms if x is not None]
        side_out: dict[str, Any] = {
            **_stats(every),
            "missing_deliveries": sum(x is None for r in mine for x in r.latencies_ms),
            "per_round_p99_ms": [round(_p99(r), 2) for r in mine],
            "median_of_round_p99s_ms": round(statistics.median(_p99(r) for r in mine), 2),
            "write_round_trip_ms_p50": round(statistics.median(r.cast_ms for r in mine), 2),
            "cpu_ms_per_round": {
                name: round(statistics.mean(r.cpu_ms[name] for r in mine), 2)
                for name in mine[0].cpu_ms
            },
        }
        if side == "accord":
            side_out["decisive ballot seen by watchers (breakdown)"] = _stats(
                [x for r in mine for x in r.ballot_ms if x is not None]
            )
            for replica, label in ((0, "same replica as the Cast (A)"), (1, "other replica (B)")):
                side_out[f"watchers on {label}"] = _stats(
                    [
                        x
                        for r in mine
                        for x, where in zip(r.latencies_ms, r.replica, strict=True)
                        if where == replica and x is not None
                    ]
                )
        out[side] = side_out
    out["rounds"] = len(rounds) // 2
    out["accord_over_etcd_p99"] = round(out["accord"]["p99_ms"] / out["etcd"]["p99_ms"], 2)
    out["accord_over_etcd_p50"] = round(out["accord"]["p50_ms"] / out["etcd"]["p50_ms"], 2)
    return out


# --- 2. ballot throughput --------------------------------------------------------------


class BallotSource:
    """Hands out (vote, voter index) pairs: each vote takes electorate - 1 ballots (so it
    never decides), and the next vote is made in the background when one is half full."""

    def __init__(
        self, electorate: int, make: Callable[[], Coroutine[Any, Any, tuple[str, int]]]
    ) -> None:
        self.per_vote = electorate - 1
        self.make = make
        self.current: tuple[str, int] | None = None
        self.used = 0
        self.ahead: asyncio.Task[tuple[str, int]] | None = None
        self.lock = asyncio.Lock()
        self.handed: list[int] = []  # the voter index of every ballot handed out

    async def next(self) -> tuple[str, int, int]:
        while True:
            vote = self.current
            if vote is not None and self.used < self.per_vote:
                i = self.used
                self.used += 1
                if i == self.per_vote // 2 and self.ahead is None:
                    self.ahead = asyncio.create_task(self.make())
                self.handed.append(i)
                return vote[0], vote[1], i
            async with self.lock:
                if self.current is vote:
                    task, self.ahead = self.ahead, None
                    self.current = await (task or self.make())
                    self.used = 0

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.cancel()


BATCHED = "accord Cast, batched (one runtime client, CastMany)"


def voter_name(i: int) -> str:
    return f"voter-{i:05d}"


async def ballot_loop(
    name: str,
    workers: int,
    seconds: float,
    source: BallotSource,
    one: Callable[[str, int, int], Awaitable[None]],
    pids: dict[str, int],
) -> tuple[Result, dict[str, int]]:
    """`workers` in-flight ballots back to back: a warm-up, then `seconds` measured."""
    latencies: list[float] = []
    stop_at = 0.0

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            vote_id, created, i = await source.next()
            t0 = time.perf_counter()
            await one(vote_id, created, i)
            latencies.append(time.perf_counter() - t0)

    stop_at = time.perf_counter() + min(1.0, seconds / 4)
    await asyncio.gather(*(worker() for _ in range(workers)))
    latencies.clear()
    with CpuMeter(pids) as meter:
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    result = Result(
        name=name,
        clients=workers,
        ops=len(latencies),
        seconds=round(elapsed, 3),
        ops_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(percentile(latencies, 0.5) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
    )
    return result, meter.per_op_us(len(latencies))


async def throughput(
    replica_a: str,
    etcd_endpoint: str,
    electorate: int,
    concurrency: list[int],
    seconds: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(replica_a)
    votes = votes_pb2_grpc.VotesStub(channel)
    # One client for every voter of this process, as an agent runtime holds it (one per
    # namespace measured): the Casts in flight share Votes.CastMany messages, each cast
    # as its own voter.
    runtimes: dict[str, AsyncClient] = {}
    views: dict[tuple[str, str], AsyncVotes] = {}
    etcd_channel = grpc.aio.insecure_channel(etcd_endpoint)
    kv = rpc_grpc.KVStub(etcd_channel)
    voters = [voter_name(i) for i in range(electorate)]
    spec = vote_spec(voters)
    made = 0
    results: list[Result] = []
    cpu: dict[str, dict[str, int]] = {}
    mean_in_vote: dict[str, float] = {}

    try:
        for workers in concurrency:
            accord_ns = f"bench-ballots-{electorate}-{workers}"
            direct_root = f"bench-direct/ns/bench-ballots-{electorate}-{workers}"

            async def propose(ns: str = accord_ns) -> tuple[str, int]:
                nonlocal made
                made += 1
                answer = await votes.Propose(
                    votes_pb2.ProposeRequest(
                        vote_id=f"ballots-{made:04d}", spec=spec, request_id=uuid.uuid4().hex
                    ),
                    metadata=metadata(ns, "bench-proposer"),
                    timeout=60,
                )
                return answer.vote.id, answer.vote.created_revision

            async def record(root: str = direct_root) -> tuple[str, int]:
                nonlocal made
                made += 1
                vote_id = f"ballots-{made:04d}"
                vote = votes_pb2.Vote(
                    id=vote_id,
                    spec=spec,
                    voters=spec.electorate.voters.voters,
                    status=votes_pb2.VOTE_STATUS_OPEN,
                )
                put = await kv.Put(
                    rpc.PutRequest(
                        key=f"{root}/votes/{vote_id}".encode(), value=vote.SerializeToString()
                    ),
                    timeout=60,
                )
                return vote_id, put.header.revision

            async def accord_one(vote_id: str, _created: int, i: int, ns: str = accord_ns) -> None:
                answer = await cast(votes, ns, vote_id, voter_name(i), OPTIONS[i % 2])
                if answer.status != votes_pb2.VOTE_STATUS_OPEN:
                    raise RuntimeError(f"vote {vote_id} decided early; the benchmark is wrong")

            async def batched_one(vote_id: str, _created: int, i: int, ns: str = accord_ns) -> None:
                view = views.get((ns, voter_name(i)))
                if view is None:
                    runtime = runtimes.get(ns)
                    if runtime is None:
                        runtime = runtimes[ns] = AsyncClient(
                            [replica_a], namespace=ns, agent_id="bench-runtime", token=""
                        )
                    view = views[(ns, voter_name(i))] = runtime.votes.as_agent(voter_name(i))
                answer = await view.cast(vote_id, OPTIONS[i % 2])
                if answer.status != VoteStatus.OPEN:
                    raise RuntimeError(f"vote {vote_id} decided early; the benchmark is wrong")

            async def direct_one(
                vote_id: str, created: int, i: int, root: str = direct_root
            ) -> None:
                record_key = f"{root}/votes/{vote_id}".encode()
                key = f"{root}/ballots/{vote_id}\x00{voter_name(i)}".encode()
                ballot = votes_pb2.Ballot(
                    voter=voter_name(i),
                    choice=OPTIONS[i % 2],
                    weight=1.0,
                    request_id=uuid.uuid4().hex,
                )
                ballot.cast_at.GetCurrentTime()
                answer = await kv.Txn(
                    rpc.TxnRequest(
                        compare=[
                            rpc.Compare(
                                key=record_key,
                                target=rpc.Compare.MOD,
                                result=rpc.Compare.EQUAL,
                                mod_revision=created,
                            ),
                            rpc.Compare(
                                key=key,
                                target=rpc.Compare.VERSION,
                                result=rpc.Compare.EQUAL,
                                version=0,
                            ),
                        ],
                        success=[
                            rpc.RequestOp(
                                request_put=rpc.PutRequest(
                                    key=key, value=ballot.SerializeToString()
                                )
                            )
                        ],
                    ),
                    timeout=30,
                )
                if not answer.succeeded:
                    raise RuntimeError("a direct ballot's Txn failed; the benchmark is wrong")

            for name, make, one in (
                ("etcd Txn per ballot, direct", record, direct_one),
                ("accord Cast (request_id)", propose, accord_one),
                (BATCHED, propose, batched_one),
            ):
                source = BallotSource(electorate, make)
                try:
                    result, per_op = await ballot_loop(name, workers, seconds, source, one, pids)
                finally:
                    source.close()
                results.append(result)
                cpu[f"{name} @{workers}"] = per_op
                mean_in_vote[f"{name} @{workers}"] = round(statistics.mean(source.handed), 1)
                print(
                    f"  {name:<30} @{workers:<3} {result.ops_per_s:>9.1f} ballots/s  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms",
                    flush=True,
                )
    finally:
        for runtime in runtimes.values():
            await runtime.close()
        await channel.close()
        await etcd_channel.close()

    by = {(r.name, r.clients): r for r in results}
    peer = "etcd Txn per ballot, direct"
    ratios = {
        f"{'batched ' if mode == BATCHED else ''}@{c}": round(
            by[(mode, c)].ops_per_s / by[(peer, c)].ops_per_s, 2
        )
        for mode in ("accord Cast (request_id)", BATCHED)
        for c in concurrency
    }
    return {
        "electorate": electorate,
        "rule": (
            "MAJORITY of the weight cast, options yes/no, voters alternating, at most "
            "electorate - 1 ballots per vote (never certain before the deadline)"
        ),
        "cast_to": "replica A only (one channel); direct: one etcd channel",
        "results": [asdict(r) for r in results],
        "accord_over_direct_ops": ratios,
        "cpu_us_per_ballot": cpu,
        "mean_ballots_already_in_vote": mean_in_vote,
    }


def code_version() -> dict[str, object]:
    """The commit measured, and which server files differed from it (the replicas run
    the working tree)."""
    repo = Path(__file__).resolve().parent.parent

    def git(*words: str) -> str:
        try:
            return subprocess.run(
                ["git", *words], cwd=repo, capture_output=True, text=True, timeout=10, check=False
            ).stdout.rstrip()
        except OSError:
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified_server_files": git("status", "--porcelain", "--", "coordinator").splitlines(),
    }


# --- the run -----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-votes-"))
    etcd: EtcdMember = start_etcd(base)
    replicas: list[Coordinator] = []
    watchers: Watchers | None = None
    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items() if k != "watcher_process"},
        "code": code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "note": (
                f"{os.cpu_count()} CPUs shared by etcd, both replicas, the driver and the "
                "watcher processes (and anything else running on the machine)"
            ),
        },
    }
    try:
        for name in ("A", "B"):
            replicas.append(
                start_coordinator(
                    base, f"replica-{name}", [etcd.endpoint], extra_args=["--log-level", "warning"]
                )
            )
        pids = {
            "driver": os.getpid(),
            "replica A": replicas[0].pid,
            "replica B": replicas[1].pid,
            "etcd": etcd.pid,
        }
        if "fanout" in args.parts:
            print(f"decision fan-out to {WATCHERS} watchers, {args.rounds} rounds ...", flush=True)
            watchers = await Watchers.start(
                [r.address for r in replicas], etcd.endpoint, "bench-fanout", args.watcher_procs
            )
            watcher_pids = {f"watcher {i}": pid for i, pid in enumerate(watchers.pids)}
            results["fan_out"] = await fan_out(
                watchers,
                replicas[0].address,
                etcd.endpoint,
                "bench-fanout",
                args.rounds,
                {**pids, **watcher_pids},
            )
            results["fan_out"]["watchers"] = (
                f"{WATCHERS} streams, each its own channel and connection, alternating "
                "between replica A and B (the decisive Cast goes to A), split over "
                f"{args.watcher_procs} watcher process(es). etcd side: {WATCHERS} etcd Watch "
                "streams, own channels, in the same processes"
            )
            await watchers.close()
            watchers = None
        for electorate in args.electorates if "throughput" in args.parts else []:
            print(f"ballot throughput, electorate {electorate} ...", flush=True)
            results.setdefault("throughput", {})[str(electorate)] = await throughput(
                replicas[0].address,
                etcd.endpoint,
                electorate,
                args.concurrency,
                args.seconds,
                pids,
            )
    finally:
        if watchers is not None:
            await watchers.close()
        for replica in replicas:
            replica.terminate()
        etcd.kill()
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summarize(results, args.out)


def summarize(results: dict[str, Any], out: Path) -> None:
    machine = results["machine"]
    summary: dict[str, object] = {
        "machine": machine["note"],
        "load average (1, 5, 15 min) at start / end": (
            f"{machine['load_average_at_start']} / {machine['load_average_at_end']}"
        ),
    }
    fan = results.get("fan_out")
    if fan:
        a, e = fan["accord"], fan["etcd"]
        summary["fan-out p99 ms, accord / etcd"] = (
            f"{a['p99_ms']} / {e['p99_ms']} = {fan['accord_over_etcd_p99']}x"
        )
        summary["fan-out p50 ms, accord / etcd"] = (
            f"{a['p50_ms']} / {e['p50_ms']} = {fan['accord_over_etcd_p50']}x"
        )
        summary["fan-out max ms, accord / etcd"] = f"{a['max_ms']} / {e['max_ms']}"
        summary[f"fan-out target: accord p99 < {FANOUT_TARGET_P99_MS:g} ms"] = (
            "met" if a["p99_ms"] < FANOUT_TARGET_P99_MS else "MISSED"
        )
        summary["fan-out missing deliveries, accord / etcd"] = (
            f"{a['missing_deliveries']} / {e['missing_deliveries']}"
        )
        summary["fan-out CPU ms per round, accord"] = a["cpu_ms_per_round"]
        summary["fan-out CPU ms per round, etcd"] = e["cpu_ms_per_round"]
    runs = results.get("throughput", {})
    for electorate, put in runs.items():
        for at, ratio in put["accord_over_direct_ops"].items():
            verdict = "met" if ratio >= THROUGHPUT_TARGET_RATIO else "MISSED"
            summary[f"ballots/s accord / direct, electorate {electorate} {at}"] = (
                f"{ratio}x (target >= {THROUGHPUT_TARGET_RATIO}x: {verdict})"
            )
    for electorate, put in runs.items():
        for name, per_op in put["cpu_us_per_ballot"].items():
            summary[f"CPU us/ballot, electorate {electorate}, {name}"] = per_op
    results["summary"] = summary
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))

    print("\nAccord votes (benchmarks/votes.py)")
    if fan:
        print(f"\n{'decision fan-out, 100 watchers':<34}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        rows = [
            ("accord, all watchers", fan["accord"]),
            (
                "  on the Cast's replica (A)",
                fan["accord"]["watchers on same replica as the Cast (A)"],
            ),
            ("  on the other replica (B)", fan["accord"]["watchers on other replica (B)"]),
            (
                "  (the decisive ballot's event)",
                fan["accord"]["decisive ballot seen by watchers (breakdown)"],
            ),
            ("etcd watch, direct Put", fan["etcd"]),
        ]
        for label, s in rows:
            print(f"{label:<34}{s['p50_ms']:>9}{s['p99_ms']:>9}{s['max_ms']:>9}")
        print(
            f"write round trip p50 ms (decisive Cast / etcd Put): "
            f"{fan['accord']['write_round_trip_ms_p50']} / {fan['etcd']['write_round_trip_ms_p50']}"
        )
        print(f"per-round p99 ms, accord: {fan['accord']['per_round_p99_ms']}")
        print(f"per-round p99 ms, etcd:   {fan['etcd']['per_round_p99_ms']}")
    for put in runs.values():
        print(f"\n{'ballots, electorate ' + str(put['electorate']):<34}", end="")
        print(f"{'in-flight':>10}{'ballots/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
        for r in put["results"]:
            print(f"{r['name']:<34}{r['clients']:>10}{r['ops_per_s']:>11}", end="")
            print(f"{r['p50_ms']:>9}{r['p99_ms']:>9}")
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"\nJSON: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="fan-out rounds per side")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--concurrency", default="1,16,64", help="in-flight ballots")
    parser.add_argument(
        "--electorates", default="2000,50", help="voters per vote (throughput; one run each)"
    )
    parser.add_argument(
        "--watcher-procs", type=int, default=2, help="processes holding the 100 watch streams"
    )
    parser.add_argument("--parts", default="fanout,throughput")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/votes.json"))
    parser.add_argument("--watcher-process", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watcher_process:
        asyncio.run(watcher_main(*args.watcher_process))
        return
    if args.quick:
        args.rounds, args.seconds, args.concurrency, args.electorates = 2, 0.5, "1,16", "200"
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.electorates = [int(c) for c in str(args.electorates).split(",")]
    asyncio.run(run(args))


if __name__ == "__main__":
    os.environ.setdefault("ACCORD_LOG_LEVEL", "warning")
    main()
