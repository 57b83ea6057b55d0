"""Accord sessions vs pycrdt-websocket (the peer a user would otherwise pick), in one run.

    python -m benchmarks.sessions [--seconds 4] [--edits 100000] [--sessions 1000]
    python -m benchmarks.sessions --quick      # a few seconds: only checks it all works

1. Fan-out: one writer types one character per update into a session with 100
   subscribers. Open-loop rungs (50, 100, 200, ... updates/s); a rung is sustained when
   the writer kept its rate and every subscriber had every update within 2 s of the
   writer's last send, with p99 delivery under 1 s. Reported: the highest sustained rung
   and delivery p50/p99 at 50 updates/s (the time from the writer sending an update to a
   subscriber having applied it to its own pycrdt Doc). Accord: writer on Push,
   subscribers on the gRPC Subscribe stream. Peer: pycrdt-websocket 0.16.5's
   WebsocketServer (benchmarks/ywebsocket_peer.py), writer and subscribers y-websocket
   clients made of pycrdt's sync messages. Subscribers run in their own process, so
   their work does not delay the writer's clock; clocks are CLOCK_MONOTONIC, shared.
2. Trace replay: a seeded synthetic editing trace (typing, cursor jumps, backspaces),
   every edit its own update, pushed into one session; stored bytes in etcd after
   compaction vs the document's encoded size, etcd's db size, push throughput, and a
   cold load (the first Read on a fresh replica) vs applying the same state locally.
3. Memory: coordinator RSS with N idle sessions loaded, and after they are unloaded,
   vs its baseline.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aetcd.rpc import rpc_pb2 as rpc
from aetcd.rpc import rpc_pb2_grpc as rpc_grpc
from pycrdt import (
    Doc,
    Text,
    YMessageType,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)

from accord.v1 import sessions_pb2, sessions_pb2_grpc
from benchmarks.common import CpuMeter, rss_mb
from tests.harness import (
    Coordinator,
    EtcdMember,
    free_port,
    start_coordinator,
    start_etcd,
    wait_for_port,
)

ROOT = "text"
SUBSCRIBERS = 100
GRACE_SECONDS = 2.0
KEEP_UP_P99_MS = 1000.0
IN_FLIGHT = 256
PEER_LABEL = "pycrdt-websocket 0.16.5"
ACCORD_LABEL = "accord (gRPC Subscribe)"
ACCORD_WS_LABEL = "accord (y-websocket)"


# --- plumbing -------------------------------------------------------------------------


class Sessions:
    """The raw Sessions stub with Accord's identity metadata (the client library has no
    sessions API yet)."""

    def __init__(self, address: str, namespace: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = sessions_pb2_grpc.SessionsStub(self.channel)
        self.metadata = (("accord-namespace", namespace), ("accord-agent-id", "bench"))

    async def open(self, name: str) -> None:
        await self.stub.Open(
            sessions_pb2.SessionsOpenRequest(name=name, roots={ROOT: sessions_pb2.ROOT_KIND_TEXT}),
            metadata=self.metadata,
            timeout=30,
        )

    async def push(self, name: str, update: bytes) -> int:
        answer = await self.stub.Push(
            sessions_pb2.SessionsPushRequest(name=name, update=update),
            metadata=self.metadata,
            timeout=60,
        )
        return int(answer.header.revision)

    async def read(self, name: str) -> sessions_pb2.SessionsReadResponse:
        return await self.stub.Read(
            sessions_pb2.SessionsReadRequest(name=name), metadata=self.metadata, timeout=120
        )

    async def close(self) -> None:
        await self.channel.close()


def typed_updates(doc: Doc, count: int) -> list[bytes]:
    """`count` updates, each one character appended to the document's text."""
    text = doc.get(ROOT, type=Text)
    made: list[bytes] = []
    subscription = doc.observe(lambda event: made.append(event.update))
    for i in range(count):
        text += "abcdefghij klmnopqrstuvwxyz\n"[i % 28]
    doc.unobserve(subscription)
    return made


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


# --- fan-out: the subscriber process ----------------------------------------------------


class Watcher:
    """One subscriber's document and when each character of the text first arrived."""

    def __init__(self) -> None:
        self.doc = Doc()
        self.text = self.doc.get(ROOT, type=Text)
        self.arrivals = array.array("d")
        self.ready = asyncio.Event()
        self.progress = asyncio.Event()

    def applied(self) -> None:
        now = time.perf_counter()
        for _ in range(len(self.text) - len(self.arrivals)):
            self.arrivals.append(now)
        self.progress.set()


async def accord_subscriber(watcher: Watcher, address: str, namespace: str, name: str) -> None:
    sessions = Sessions(address, namespace)
    stream = sessions.stub.Subscribe(
        sessions_pb2.SessionsSubscribeRequest(name=name), metadata=sessions.metadata
    )
    async for event in stream:
        if event.WhichOneof("event") == "update":
            watcher.doc.apply_update(event.update)
            watcher.applied()
        watcher.ready.set()


async def ywebsocket_subscriber(watcher: Watcher, url: str) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(create_sync_message(watcher.doc))
        async for message in ws:
            data = bytes(message)  # type: ignore[arg-type]
            if data[0] == YMessageType.SYNC:
                reply = handle_sync_message(data[1:], watcher.doc)
                if reply is not None:
                    await ws.send(reply)
                watcher.applied()
            watcher.ready.set()


async def subscriber_process(kind: str, target: str, namespace: str, name: str) -> None:
    """Runs SUBSCRIBERS subscribers; driven by lines on stdin (see FanOut)."""
    watchers = [Watcher() for _ in range(SUBSCRIBERS)]
    if kind == "accord":
        tasks = [
            asyncio.create_task(accord_subscriber(w, target, namespace, name)) for w in watchers
        ]
    else:
        tasks = [asyncio.create_task(ywebsocket_subscriber(w, target)) for w in watchers]
    await asyncio.gather(*(w.ready.wait() for w in watchers))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    done_to = 0
    while line := (await reader.readline()).decode().split():
        if line[0] != "wait":
            break
        upto, grace, out = int(line[1]), float(line[2]), line[3]
        deadline = time.perf_counter() + grace
        for w in watchers:
            while len(w.arrivals) < upto and time.perf_counter() < deadline:
                w.progress.clear()
                try:
                    await asyncio.wait_for(w.progress.wait(), deadline - time.perf_counter())
                except TimeoutError:
                    break
        record = array.array("d")
        for w in watchers:
            got = w.arrivals[done_to:upto]
            got.extend([math.nan] * (upto - done_to - len(got)))
            record.extend(got)
        _write(out, record)
        done_to = upto
        print("done", flush=True)
    for task in tasks:
        task.cancel()


def _write(path: str, values: array.array[float]) -> None:
    Path(path).write_bytes(values.tobytes())


# --- fan-out: the writer side ---------------------------------------------------------


class FanOut:
    """One side of the fan-out comparison: a writer, a server, a subscriber process."""

    def __init__(self, label: str, server_pids: dict[str, int]) -> None:
        self.label = label
        self.server_pids = server_pids
        self.doc = Doc()
        self.sent = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.failed_at: float | None = None
        self.rungs: list[dict[str, Any]] = []

    async def start_subscribers(self, args: list[str]) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.sessions",
            "--subscribers",
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"{self.label}: the subscribers did not start")

    async def send(self, update: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """Wait for the writer's own sends to finish (acknowledged, for Accord)."""

    async def rung(self, rate: float, seconds: float, tmp: Path) -> dict[str, Any]:
        count = max(10, round(rate * seconds))
        updates = typed_updates(self.doc, count)
        first = self.sent
        send_times = array.array("d")
        pids = {**self.server_pids, "subscribers": self.proc.pid if self.proc else 0}
        with CpuMeter(pids) as meter:
            started = time.perf_counter()
            for i, update in enumerate(updates):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                send_times.append(time.perf_counter())
                await self.send(update)
            sending = time.perf_counter() - started
            await self.drain()
            self.sent += count
            out = tmp / f"{self.label.split()[0]}-{self.sent}.bin"
            assert self.proc is not None and self.proc.stdin and self.proc.stdout
            self.proc.stdin.write(f"wait {self.sent} {GRACE_SECONDS} {out}\n".encode())
            await self.proc.stdin.drain()
            await self.proc.stdout.readline()
        arrivals = array.array("d")
        arrivals.frombytes(out.read_bytes())
        out.unlink()
        latencies: list[float] = []
        missing = 0
        # Per update: when its first subscriber had it (the write and the server's path
        # to the first stream) and how long after that its last one did (the fan-out).
        first_ms: list[float] = []
        spread_ms: list[float] = []
        for i in range(count):
            got = [arrivals[s * count + i] for s in range(SUBSCRIBERS)]
            seen = [a for a in got if not math.isnan(a)]
            missing += len(got) - len(seen)
            latencies.extend((a - send_times[i]) * 1000 for a in seen)
            if seen:
                first_ms.append((min(seen) - send_times[i]) * 1000)
                spread_ms.append((max(seen) - min(seen)) * 1000)
        latencies.sort()
        first_ms.sort()
        spread_ms.sort()
        achieved = (count - 1) / sending if sending > 0 else rate
        result = {
            "rate": rate,
            "updates": count,
            "achieved_rate": round(achieved, 1),
            "missing_deliveries": missing,
            "p50_ms": round(percentile(latencies, 0.5), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(latencies[-1], 2) if latencies else math.nan,
            "first_subscriber_p50_ms": round(percentile(first_ms, 0.5), 2),
            "first_subscriber_p99_ms": round(percentile(first_ms, 0.99), 2),
            "first_to_last_p50_ms": round(percentile(spread_ms, 0.5), 2),
            "first_to_last_p99_ms": round(percentile(spread_ms, 0.99), 2),
            "server_cpu_us_per_update": round(
                sum(v for k, v in meter.used.items() if k != "subscribers") * 1e6 / count
            ),
            "subscribers_cpu_us_per_delivery": round(
                meter.used["subscribers"] * 1e6 / (count * SUBSCRIBERS)
            ),
            "first_update": first,
        }
        result["kept_up"] = (
            missing == 0 and achieved >= 0.9 * rate and result["p99_ms"] < KEEP_UP_P99_MS
        )
        self.rungs.append(result)
        if not result["kept_up"] and self.failed_at is None:
            self.failed_at = rate
        return result

    def sustained(self) -> float:
        return max((r["rate"] for r in self.rungs if r["kept_up"]), default=0.0)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class AccordFanOut(FanOut):
    def __init__(self, address: str, namespace: str, name: str, pids: dict[str, int]) -> None:
        super().__init__(ACCORD_LABEL, pids)
        self.sessions = Sessions(address, namespace)
        self.name = name
        self.address, self.namespace = address, namespace
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.sessions.open(self.name)
        await self.start_subscribers(["accord", self.address, self.namespace, self.name])

    async def _push(self, update: bytes) -> None:
        try:
            await self.sessions.push(self.name, update)
        finally:
            self._slots.release()

    async def send(self, update: bytes) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._push(update))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending)

    async def close(self) -> None:
        await super().close()
        await self.sessions.close()


class YWebsocketFanOut(FanOut):
    """A y-websocket writer; the server echoes every update to it too, which it drains."""

    def __init__(self, label: str, url: str, pids: dict[str, int]) -> None:
        super().__init__(label, pids)
        self.url = url
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from websockets.asyncio.client import connect

        self._ws = await connect(self.url, max_size=None, compression=None)
        self._reader = asyncio.create_task(self._read())
        await self.start_subscribers(["ywebsocket", self.url, "", ""])

    async def _read(self) -> None:
        shadow = Doc()
        async for message in self._ws:
            data = bytes(message)
            if data[0] == YMessageType.SYNC:
                reply = handle_sync_message(data[1:], shadow)
                if reply is not None:
                    await self._ws.send(reply)

    async def send(self, update: bytes) -> None:
        await self._ws.send(create_update_message(update))

    async def close(self) -> None:
        await super().close()
        if self._reader is not None:
            self._reader.cancel()
        await self._ws.close()


async def fan_out(
    sides: list[FanOut], seconds: float, max_rate: float, repeats: int, tmp: Path
) -> dict[str, Any]:
    """The fixed 50/s rung, then a ladder of doubling rates, each side until it fails,
    then one rung halfway between each side's last success and its failure."""
    for side in sides:
        await side.start()
    for side in sides:  # warm-up: connections, first loads
        await side.rung(50, min(1.0, seconds), tmp)
        side.rungs.clear()
    rounds: dict[str, list[dict[str, Any]]] = {side.label: [] for side in sides}
    for _ in range(repeats):  # alternating rounds, so load from elsewhere hits every side
        for side in sides:
            rounds[side.label].append(await side.rung(50, seconds, tmp))
    fixed = {label: _median_round(results) for label, results in rounds.items()}
    for side in sides:  # the ladder decides what each side sustains
        side.failed_at = None
    rate = 100.0
    while rate <= max_rate and any(s.failed_at is None for s in sides):
        for side in sides:
            if side.failed_at is None:
                print(f"  {side.label} @ {rate:g}/s: {await side.rung(rate, seconds, tmp)}")
        rate *= 2
    for side in sides:
        if side.failed_at is not None and side.failed_at > 50:
            print(f"  {side.label} @ {side.failed_at * 0.75:g}/s: ", end="")
            print(await side.rung(side.failed_at * 0.75, seconds, tmp))
    for side in sides:
        await side.close()
    return {
        "at_50_per_s": fixed,
        "at_50_per_s_rounds": rounds,
        "sustained": {s.label: s.sustained() for s in sides},
        "ladder": {s.label: s.rungs for s in sides},
    }


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median p99 (its other figures with it)."""
    ordered = sorted(rounds, key=lambda r: (math.isnan(r["p99_ms"]), r["p99_ms"]))
    return ordered[(len(ordered) - 1) // 2]


# --- trace replay ---------------------------------------------------------------------


def editing_trace(edits: int, seed: int) -> tuple[list[bytes], Doc]:
    """Mostly sequential typing with cursor jumps and backspaces; one update per edit."""
    rng = random.Random(seed)
    doc = Doc()
    text = doc.get(ROOT, type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    words = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with"]
    pending = ""
    cursor = length = 0
    while len(updates) < edits:
        roll = rng.random()
        if roll < 0.015:  # jump elsewhere
            cursor = rng.randint(0, length)
        elif roll < 0.10 and cursor > 0:  # backspace
            del text[cursor - 1 : cursor]
            cursor -= 1
            length -= 1
        else:
            if not pending:
                pending = rng.choice(words) + (" " if rng.random() < 0.93 else ".\n")
            text.insert(cursor, pending[0])
            pending = pending[1:]
            cursor += 1
            length += 1
    return updates, doc


async def stored_keys(etcd: EtcdMember, root: str, namespace: str, name: str) -> dict[str, int]:
    async with grpc.aio.insecure_channel(etcd.endpoint) as channel:
        kv = rpc_grpc.KVStub(channel)
        meta = f"{root}/ns/{namespace}/sessions/{name}".encode()
        prefix = f"{root}/ns/{namespace}/sdata/{name}\x00".encode()
        counts = {"keys": 0, "bytes": 0, "log_entries": 0, "log_bytes": 0, "snapshot_bytes": 0}
        start = prefix
        end = prefix[:-1] + b"\x01"
        found = await kv.Range(rpc.RangeRequest(key=meta))
        for item in found.kvs:
            counts["keys"] += 1
            counts["bytes"] += len(item.key) + len(item.value)
        while True:
            page = await kv.Range(rpc.RangeRequest(key=start, range_end=end, limit=2000))
            for item in page.kvs:
                size = len(item.key) + len(item.value)
                counts["keys"] += 1
                counts["bytes"] += size
                if b"\x00log\x00" in item.key:
                    counts["log_entries"] += 1
                    counts["log_bytes"] += size
                elif b"\x00snap\x00" in item.key:
                    counts["snapshot_bytes"] += size
            if not page.more:
                return counts
            start = page.kvs[-1].key + b"\x00"


def db_size(etcd: EtcdMember) -> int:
    return int(json.loads(etcd.ctl("endpoint", "status", "-w", "json"))[0]["Status"]["dbSize"])


async def trace_replay(
    etcd: EtcdMember,
    address: str,
    base: Path,
    edits: int,
    concurrency: int,
    idle: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    made = time.perf_counter()
    updates, local = editing_trace(edits, seed=4)
    generated = time.perf_counter() - made
    final = local.get_update()
    namespace, name = "bench-trace", "trace"
    sessions = Sessions(address, namespace)
    await sessions.open(name)
    queue = iter(updates)
    latencies: list[float] = []

    async def worker() -> None:
        for update in queue:
            t0 = time.perf_counter()
            await sessions.push(name, update)
            latencies.append(time.perf_counter() - t0)

    with CpuMeter(pids) as meter:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        pushing = time.perf_counter() - started
    read = await sessions.read(name)
    check = Doc()
    check.apply_update(read.snapshot)
    exact = str(check.get(ROOT, type=Text)) == str(local.get(ROOT, type=Text))
    # compaction runs in the background after the last update: wait for it to settle
    stored = await stored_keys(etcd, "accord", namespace, name)
    for _ in range(100):
        await asyncio.sleep(0.3)
        again = await stored_keys(etcd, "accord", namespace, name)
        if again == stored:
            break
        stored = again
    # idle: the replica folds the log into one snapshot as it unloads the session
    idle_stored = stored

    async def folded() -> bool:
        nonlocal idle_stored
        idle_stored = await stored_keys(etcd, "accord", namespace, name)
        return idle_stored["log_entries"] == 0

    unloaded = await wait_for(folded, idle * 3 + 30)
    t0 = time.perf_counter()
    await sessions.read(name)
    reload_s = time.perf_counter() - t0
    db_before = db_size(etcd)
    etcd.compact()
    etcd.ctl("defrag")
    db_after = db_size(etcd)

    fresh = start_coordinator(base, "cold", [etcd.endpoint], extra_args=["--log-level", "warning"])
    cold_client = Sessions(fresh.address, namespace)
    try:
        await cold_client.stub.List(
            sessions_pb2.SessionsListRequest(), metadata=cold_client.metadata
        )
        t0 = time.perf_counter()
        cold = await cold_client.read(name)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        await cold_client.read(name)
        warm_s = time.perf_counter() - t0
    finally:
        await cold_client.close()
        fresh.terminate()
    t0 = time.perf_counter()
    floor = Doc()
    floor.apply_update(cold.snapshot)
    str(floor.get(ROOT, type=Text))
    local_s = time.perf_counter() - t0
    await sessions.close()
    latencies.sort()
    return {
        "edits": edits,
        "trace_generation_s": round(generated, 2),
        "final_text_chars": len(str(local.get(ROOT, type=Text))),
        "doc_encoded_bytes": len(final),
        "state_exact_after_replay": exact and cold.snapshot == read.snapshot,
        "push_concurrency": concurrency,
        "push_per_s": round(edits / pushing, 1),
        "push_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "push_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "cpu_us_per_push": {k: round(v * 1e6 / edits) for k, v in meter.used.items()},
        "stored": stored,
        "stored_over_doc": round(stored["bytes"] / len(final), 2),
        "stored_after_idle_unload": idle_stored,
        "stored_after_idle_unload_over_doc": round(idle_stored["bytes"] / len(final), 2),
        "log_folded_on_unload": unloaded,
        "reload_after_idle_unload_ms": round(reload_s * 1000, 1),
        "etcd_db_bytes_before_defrag": db_before,
        "etcd_db_bytes_after_compact_defrag": db_after,
        "cold_read_ms": round(cold_s * 1000, 1),
        "warm_read_ms": round(warm_s * 1000, 1),
        "local_apply_ms": round(local_s * 1000, 1),
        "cold_over_local_apply": round(cold_s / local_s, 1),
        "cold_ms_per_100kb_doc": round(cold_s * 1000 / (len(final) / 100_000), 1),
    }


# --- memory ---------------------------------------------------------------------------


def etcd_watchers(etcd: EtcdMember) -> int:
    with urllib.request.urlopen(f"http://{etcd.endpoint}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    return -1


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.5)
    return False


async def memory(etcd: EtcdMember, base: Path, count: int, idle: float) -> dict[str, Any]:
    replica = start_coordinator(
        base,
        "memory",
        [etcd.endpoint],
        extra_args=["--log-level", "warning", "--session-idle", str(idle)],
    )
    sessions = Sessions(replica.address, "bench-memory")
    content = typed_updates(Doc(), 200)
    try:
        await sessions.open("warm-up")
        await sessions.push("warm-up", content[0])
        await sessions.read("warm-up")
        watchers_before = etcd_watchers(etcd)
        baseline = rss_mb(replica.pid)
        slots = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with slots:
                name = f"idle-{i:05d}"
                await sessions.open(name)
                state = Doc()
                for update in content[: 5 + i % 20]:
                    state.apply_update(update)
                await sessions.push(name, state.get_update())

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        loading = time.perf_counter() - started
        watchers_loaded = etcd_watchers(etcd)
        loaded = rss_mb(replica.pid)

        async def unloaded() -> bool:
            return etcd_watchers(etcd) <= watchers_before

        gone = await wait_for(unloaded, idle * 2 + 30)
        after = rss_mb(replica.pid)
    finally:
        await sessions.close()
        replica.terminate()
    return {
        "sessions": count,
        "idle_seconds": idle,
        "load_seconds": round(loading, 1),
        "loaded_sessions_seen_by_etcd_watchers": watchers_loaded - watchers_before,
        "rss_mb_baseline": round(baseline, 1),
        "rss_mb_loaded": round(loaded, 1),
        "rss_mb_after_unload": round(after, 1),
        "unloaded": gone,
        "loaded_over_baseline_mb": round(loaded - baseline, 1),
        "after_unload_over_baseline_mb": round(after - baseline, 1),
    }


# --- the run --------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="accord-bench-sessions-"))
    etcd = start_etcd(base)
    coordinator = start_coordinator(
        base,
        "bench",
        [etcd.endpoint],
        extra_args=["--log-level", "warning", "--session-idle", str(args.trace_idle)],
    )
    peer_port = free_port()
    peer = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ywebsocket_peer.py")), str(peer_port)]
    )
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        wait_for_port(peer_port, 30, peer)
        if "fanout" in args.parts:
            await run_fan_out(args, results, etcd, coordinator, peer, peer_port, base)
        if "trace" in args.parts:
            print("trace replay ...")
            results["trace"] = await trace_replay(
                etcd,
                coordinator.address,
                base,
                args.edits,
                args.concurrency,
                args.trace_idle,
                {"coordinator": coordinator.pid, "etcd": etcd.pid},
            )
        if "memory" in args.parts:
            print("memory ...")
            results["memory"] = await memory(etcd, base, args.sessions, args.idle)
    finally:
        peer.kill()
        coordinator.terminate()
        etcd.kill()
    summarize(results, args.out)


async def run_fan_out(
    args: argparse.Namespace,
    results: dict[str, Any],
    etcd: EtcdMember,
    coordinator: Coordinator,
    peer: subprocess.Popen[bytes],
    peer_port: int,
    base: Path,
) -> None:
    print("fan-out ...")
    accord_pids = {"coordinator": coordinator.pid, "etcd": etcd.pid}
    sides: list[FanOut] = []
    if "peer" in args.sides:
        sides.append(
            YWebsocketFanOut(
                PEER_LABEL, f"ws://127.0.0.1:{peer_port}/fanout", {"peer server": peer.pid}
            )
        )
    if "grpc" in args.sides:
        sides.append(AccordFanOut(coordinator.address, "bench-fanout", "fanout", accord_pids))
    ws_port = getattr(coordinator, "ws_port", 0)
    if ws_port and "ws" in args.sides:  # the coordinator's y-websocket endpoint: apples to apples
        sides.append(
            YWebsocketFanOut(
                ACCORD_WS_LABEL, f"ws://127.0.0.1:{ws_port}/bench-fanout-ws/fanout", accord_pids
            )
        )
    try:
        results["fan_out"] = await fan_out(sides, args.seconds, args.max_rate, args.repeats, base)
    finally:
        for side in sides:
            await side.close()


def summarize(results: dict[str, Any], out: Path) -> None:
    summary: dict[str, object] = {}
    fan = results.get("fan_out")
    if fan and PEER_LABEL in fan["sustained"]:  # (--sides without the peer: no ratios)
        peer50 = fan["at_50_per_s"][PEER_LABEL]
        peer_rate = fan["sustained"][PEER_LABEL]
        for label in (ACCORD_LABEL, ACCORD_WS_LABEL):
            if label not in fan["sustained"]:
                continue
            ours50, rate = fan["at_50_per_s"][label], fan["sustained"][label]
            summary[f"fan-out sustained updates/s, {label} / peer"] = (
                f"{rate:g} / {peer_rate:g} = {_ratio(rate, peer_rate)}"
            )
            for q in ("p50", "p99"):
                summary[f"delivery {q} ms @50/s, {label} / peer"] = (
                    f"{ours50[f'{q}_ms']} / {peer50[f'{q}_ms']} = "
                    f"{_ratio(ours50[f'{q}_ms'], peer50[f'{q}_ms'])}"
                )
            cpu, peer_cpu = (x["server_cpu_us_per_update"] for x in (ours50, peer50))
            summary[f"server CPU us per update @50/s, {label} / peer"] = (
                f"{cpu} / {peer_cpu} = {_ratio(cpu, peer_cpu)}"
            )
    trace = results.get("trace")
    if trace:
        summary["trace: stored bytes in etcd / doc encoded bytes (target < 3)"] = (
            f"{trace['stored']['bytes']} / {trace['doc_encoded_bytes']} = "
            f"{trace['stored_over_doc']}"
        )
        summary["trace: stored bytes after idle unload (log folded) / doc bytes"] = (
            f"{trace['stored_after_idle_unload']['bytes']} / {trace['doc_encoded_bytes']} = "
            f"{trace['stored_after_idle_unload_over_doc']}"
        )
        summary["trace: reload ms after idle unload (same replica)"] = trace[
            "reload_after_idle_unload_ms"
        ]
        summary["trace: etcd db bytes before / after compact+defrag"] = (
            f"{trace['etcd_db_bytes_before_defrag']} / "
            f"{trace['etcd_db_bytes_after_compact_defrag']}"
        )
        summary["trace: push updates/s (each edit its own update)"] = trace["push_per_s"]
        summary["trace: cold load ms (first Read, fresh replica) / local apply ms"] = (
            f"{trace['cold_read_ms']} / {trace['local_apply_ms']} = "
            f"{trace['cold_over_local_apply']}"
        )
        summary["trace: cold / warm Read"] = _ratio(trace["cold_read_ms"], trace["warm_read_ms"])
        summary["trace: state exact"] = trace["state_exact_after_replay"]
    mem = results.get("memory")
    if mem:
        summary[f"memory: RSS MB over baseline, {mem['sessions']} idle sessions loaded"] = mem[
            "loaded_over_baseline_mb"
        ]
        summary["memory: RSS MB over baseline after unloading"] = mem[
            "after_unload_over_baseline_mb"
        ]
    results["summary"] = summary
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("\nAccord sessions (benchmarks/sessions.py)")
    if fan:
        print(f"{'fan-out, 100 subscribers':<28}{'rate/s':>8}{'achieved':>10}", end="")
        print(f"{'p50 ms':>9}{'p99 ms':>9}{'srv us/upd':>11}{'kept up':>9}")
        for label, rungs in fan["ladder"].items():
            for r in rungs:
                print(f"{label[:27]:<28}{r['rate']:>8g}{r['achieved_rate']:>10g}", end="")
                print(f"{r['p50_ms']:>9g}{r['p99_ms']:>9g}", end="")
                print(f"{r['server_cpu_us_per_update']:>11}{r['kept_up']!s:>9}")
        print(f"\n{'@50/s rounds':<28}{'p50 ms':>9}{'p99 ms':>9}", end="")
        print(f"{'1st sub p99':>12}{'1st-last p50':>13}{'1st-last p99':>13}")
        for label, rounds in fan["at_50_per_s_rounds"].items():
            for r in rounds:
                print(f"{label[:27]:<28}{r['p50_ms']:>9g}{r['p99_ms']:>9g}", end="")
                print(
                    f"{r['first_subscriber_p99_ms']:>12g}{r['first_to_last_p50_ms']:>13g}", end=""
                )
                print(f"{r['first_to_last_p99_ms']:>13g}")
        print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"\nJSON: {out}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per fan-out rung")
    parser.add_argument("--max-rate", type=float, default=12800)
    parser.add_argument("--edits", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64, help="pushes in flight (trace)")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument(
        "--trace-idle", type=float, default=5.0, help="--session-idle of the main replica"
    )
    parser.add_argument("--idle", type=float, default=20.0, help="--session-idle (memory)")
    parser.add_argument("--parts", default="fanout,trace,memory")
    parser.add_argument("--sides", default="peer,grpc,ws", help="fan-out sides to run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating 50/s rounds")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sessions.json"))
    parser.add_argument("--subscribers", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscribers:
        asyncio.run(subscriber_process(*args.subscribers))
        return
    if args.quick:
        args.seconds, args.max_rate, args.edits, args.repeats = 0.3, 0, 500, 1
        args.sessions, args.idle, args.trace_idle = 20, 1.0, 1.0
    asyncio.run(run(args))


if __name__ == "__main__":
    os.environ.setdefault("ACCORD_LOG_LEVEL", "warning")
    main()
