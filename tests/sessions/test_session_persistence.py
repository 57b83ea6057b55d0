"""Sessions persist exactly: across a full restart of every replica and of etcd, through
compaction racing pushes from two replicas, and through snapshots chunked past etcd's
request size. Every check compares bytes: the snapshot update, the state vector, the
JSON view, against a local pycrdt Doc that applied every update."""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aetcd.rpc import rpc_pb2 as rpc
from pycrdt import Doc, Map, Text

from accord.coordinator.sessions.compaction import SNAPSHOT_CHUNK_BYTES
from accord.coordinator.sessions.doc import COMPACT_MAX_LOG_ENTRIES, COMPACT_MIN_LOG_BYTES
from accord.v1 import sessions_pb2
from tests.harness import (
    Coordinator,
    EtcdMember,
    EtcdStubs,
    Stubs,
    identity,
    own_cluster_token,
    start_coordinator,
    start_etcd,
)

ROOT = "accord"  # the coordinators' default --root
WAIT_SECONDS = 60
BIG_MESSAGES = 64 * 1024 * 1024  # snapshots are read whole


class Sessions(Stubs):
    """The Sessions stub on one replica, as one agent of one namespace."""

    def __init__(self, address: str, namespace: str, token: str | None = None) -> None:
        super().__init__(address, options=[("grpc.max_receive_message_length", BIG_MESSAGES)])
        self.metadata = identity(namespace, "persistence", token)

    async def open(self, name: str, roots: dict[str, int] | None = None) -> None:
        request = sessions_pb2.SessionsOpenRequest(name=name, roots=roots or {})
        await self.sessions.Open(request, metadata=self.metadata, timeout=30)

    async def push(self, name: str, update: bytes) -> int:
        request = sessions_pb2.SessionsPushRequest(name=name, update=update)
        answer = await self.sessions.Push(request, metadata=self.metadata, timeout=30)
        return int(answer.header.revision)

    async def apply(self, name: str, *operations: sessions_pb2.Operation) -> None:
        request = sessions_pb2.SessionsApplyRequest(name=name, operations=operations)
        await self.sessions.Apply(request, metadata=self.metadata, timeout=30)

    async def read(self, name: str) -> sessions_pb2.SessionsReadResponse:
        request = sessions_pb2.SessionsReadRequest(name=name)
        return await self.sessions.Read(request, metadata=self.metadata, timeout=60)


@dataclass(frozen=True)
class Stored:
    """What etcd holds for one session."""

    snapshot_revision: int
    log: dict[bytes, tuple[int, bytes]]  # log key -> (create_revision, update)
    snapshot_chunks: dict[bytes, bytes]

    @property
    def snapshot_ids(self) -> set[bytes]:
        """Distinct snapshots present (revision and digest, without the chunk index)."""
        return {key.rsplit(b"\x00", 1)[0] for key in self.snapshot_chunks}


class Store(EtcdStubs):
    """Reads a session's keys straight from etcd, and waits on its watch."""

    def __init__(self, etcd: EtcdMember, namespace: str, name: str) -> None:
        super().__init__(etcd.endpoint, options=[("grpc.max_receive_message_length", BIG_MESSAGES)])
        self.meta_key = f"{ROOT}/ns/{namespace}/sessions/{name}".encode()
        self.prefix = f"{ROOT}/ns/{namespace}/sdata/{name}\x00".encode()

    async def read(self) -> Stored:
        from accord.v1 import records_pb2

        meta = await self.kv.Range(rpc.RangeRequest(key=self.meta_key))
        assert meta.kvs, "the session record is missing"
        record = records_pb2.SessionRecord.FromString(meta.kvs[0].value)
        data = await self.kv.Range(
            rpc.RangeRequest(
                key=self.prefix,
                range_end=self.prefix[:-1] + b"\x01",
                revision=meta.header.revision,
            )
        )
        log = {
            kv.key: (kv.create_revision, kv.value) for kv in data.kvs if b"\x00log\x00" in kv.key
        }
        chunks = {kv.key: kv.value for kv in data.kvs if b"\x00snap\x00" in kv.key}
        return Stored(record.snapshot_revision, log, chunks)

    async def snapshot_revision(self) -> int:
        from accord.v1 import records_pb2

        meta = await self.kv.Range(rpc.RangeRequest(key=self.meta_key))
        return records_pb2.SessionRecord.FromString(meta.kvs[0].value).snapshot_revision

    async def until(self, condition: Callable[[Stored], bool], what: str) -> Stored:
        """Return the stored state once condition holds, re-checking on every etcd change
        to the session."""
        queue: asyncio.Queue[None] = asyncio.Queue()

        async def requests() -> AsyncIterator[rpc.WatchRequest]:
            yield rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=self.prefix, range_end=self.prefix[:-1] + b"\x01"
                )
            )
            await asyncio.Event().wait()

        call = self.watch.Watch(requests())

        async def follow() -> None:
            async for _ in call:
                queue.put_nowait(None)

        follower = asyncio.create_task(follow())
        try:
            await queue.get()  # the watch is created: no change can slip by from here
            async with asyncio.timeout(WAIT_SECONDS):
                while True:
                    stored = await self.read()
                    if condition(stored):
                        return stored
                    await queue.get()
                    while not queue.empty():
                        queue.get_nowait()
        except TimeoutError:
            stored = await self.read()
            pytest.fail(
                f"etcd never reached: {what}; last seen: snapshot at "
                f"{stored.snapshot_revision}, {len(stored.log)} log entries, "
                f"{len(stored.snapshot_ids)} snapshots"
            )
        finally:
            call.cancel()
            follower.cancel()


def compacted(stored: Stored) -> bool:
    """One snapshot, and no log entry it covers is left."""
    return (
        stored.snapshot_revision > 0
        and len(stored.snapshot_ids) == 1
        and all(rev > stored.snapshot_revision for rev, _ in stored.log.values())
    )


def text_updates(client_id: int, chunks: list[str], root: str = "text") -> tuple[Doc, list[bytes]]:
    """A writer's own Doc appending each chunk, and the update each append made."""
    doc = Doc(client_id=client_id)
    text = doc.get(root, type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for chunk in chunks:
        text += chunk
    return doc, updates


def appended(doc: Doc, chunk: str) -> bytes:
    """Append chunk to the doc's text; the update that made."""
    made: list[bytes] = []
    subscription = doc.observe(lambda event: made.append(event.update))
    text = doc.get("text", type=Text)
    text += chunk
    doc.unobserve(subscription)
    return made[0]


def random_text(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + " \n", k=size))


def state(read: sessions_pb2.SessionsReadResponse) -> tuple[bytes, bytes, str]:
    return read.snapshot, read.state_vector, read.json


def union(*updates: bytes) -> Doc:
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


@pytest.fixture
def fresh_replica(etcd: EtcdMember, tmp_path: Path) -> Iterator[Callable[[], Coordinator]]:
    """Start extra replicas on the shared etcd (a cold cache); stopped afterwards."""
    started: list[Coordinator] = []

    def start() -> Coordinator:
        started.append(start_coordinator(tmp_path, f"fresh-{len(started)}", [etcd.endpoint]))
        return started[-1]

    yield start
    for replica in started:
        replica.kill()


async def concurrently(*steps: Awaitable[Any]) -> list[Any]:
    return list(await asyncio.gather(*steps))


# --- 1. a full restart: every replica and etcd ----------------------------------------


async def test_full_restart_brings_every_session_back_byte_identical(
    tmp_path: Path, namespace: str
) -> None:
    etcd = start_etcd(tmp_path, "restart-etcd")
    replicas = [start_coordinator(tmp_path, f"restart-{i}", [etcd.endpoint]) for i in range(2)]
    addresses = [r.address for r in replicas]
    token = own_cluster_token(etcd.endpoint, addresses, namespace, "persistence")
    clients = [Sessions(r.address, namespace, token) for r in replicas]
    rng = random.Random(1)
    names = ["plan", "notes", "board"]
    try:
        # plan: two writers on two replicas, enough to compact (a snapshot plus a log tail)
        await clients[0].open("plan")
        chunks = [random_text(rng, 2048) for _ in range(80)]
        _, first = text_updates(11, chunks[:40])
        _, second = text_updates(22, chunks[40:])
        for a, b in zip(first, second, strict=True):
            await concurrently(clients[0].push("plan", a), clients[1].push("plan", b))
        # notes: server-side operations (a map and an array); board: small Yjs pushes
        await clients[1].open(
            "notes",
            {"meta": sessions_pb2.ROOT_KIND_MAP, "items": sessions_pb2.ROOT_KIND_ARRAY},
        )
        for i in range(30):
            await clients[i % 2].apply(
                "notes",
                sessions_pb2.Operation(
                    root="meta", map_set=sessions_pb2.MapSet(key=f"k{i}", value_json=str(i))
                ),
                sessions_pb2.Operation(
                    root="items",
                    array_insert=sessions_pb2.ArrayInsert(
                        append=True, values_json=[f'{{"n": {i}}}']
                    ),
                ),
            )
        await clients[0].open("board")
        board = Doc(client_id=33)
        cells = board.get("cells", type=Map)
        sent: list[bytes] = []
        board.observe(lambda event: sent.append(event.update))
        for i in range(50):
            cells[f"c{i % 7}"] = i
        for update in sent:
            await clients[1].push("board", update)

        before = {}
        for name in names:
            reads = [await c.read(name) for c in clients]
            assert state(reads[0]) == state(reads[1]), f"replicas disagree on {name}"
            before[name] = state(reads[0])
        assert before["board"][0] == board.get_update()
        assert before["plan"][0] == union(*first, *second).get_update()
        plan_store = Store(etcd, namespace, "plan")
        try:
            assert await plan_store.snapshot_revision() > 0, "plan was never compacted"
        finally:
            await plan_store.close()

        # everything stops at once, like a power cut, then comes back on its data dir
        for replica in replicas:
            replica.kill()
        etcd.kill()
        etcd.start()
        for replica in replicas:
            replica.start()

        for name in names:
            for client in clients:
                assert state(await client.read(name)) == before[name], f"{name} changed"
    finally:
        for client in clients:
            await client.close()
        for replica in replicas:
            replica.kill()
        etcd.kill()


# --- 2. compaction racing pushes from two replicas ------------------------------------


async def test_compaction_under_concurrent_pushes_keeps_state_exact(
    replicas: list[Coordinator],
    etcd: EtcdMember,
    namespace: str,
    fresh_replica: Callable[[], Coordinator],
) -> None:
    name = "busy"
    clients = [Sessions(r.address, namespace) for r in replicas]
    store = Store(etcd, namespace, name)
    rng = random.Random(2)
    try:
        await clients[0].open(name, {"text": sessions_pb2.ROOT_KIND_TEXT})
        snapshots_seen: set[int] = set()
        pushed: list[bytes] = []
        writers = [Doc(client_id=100 + i) for i in range(2)]

        async def writer(i: int) -> None:
            """Push 1 KiB appends through replica i until three compactions committed."""
            while len(snapshots_seen) < 3:
                update = appended(writers[i], random_text(rng, 1024))
                await clients[i].push(name, update)
                pushed.append(update)
                snapshots_seen.add(await store.snapshot_revision())
                snapshots_seen.discard(0)

        await asyncio.wait_for(concurrently(writer(0), writer(1)), WAIT_SECONDS * 2)
        assert len(pushed) * 1024 > COMPACT_MIN_LOG_BYTES

        stored = await store.until(compacted, "one snapshot and no covered log entry")
        assert len(stored.log) <= COMPACT_MAX_LOG_ENTRIES
        assert sum(len(v) for v in stored.snapshot_chunks.values()) < 2 * len(pushed) * 1024

        expected = union(*pushed)
        for client in clients:
            read = await client.read(name)
            assert read.state_vector == expected.get_state()
            assert read.snapshot == expected.get_update()
            assert str(union(read.snapshot).get("text", type=Text)) == str(
                expected.get("text", type=Text)
            )
        # a replica that never saw the session loads the snapshot and the tail exactly
        cold = Sessions(fresh_replica().address, namespace)
        try:
            read = await cold.read(name)
            assert read.snapshot == expected.get_update()
            assert read.state_vector == expected.get_state()
        finally:
            await cold.close()
    finally:
        await store.close()
        for client in clients:
            await client.close()


# --- 3. snapshots bigger than one etcd value ------------------------------------------


async def test_snapshots_past_the_chunk_size_are_chunked_and_load_exactly(
    replicas: list[Coordinator],
    etcd: EtcdMember,
    namespace: str,
    fresh_replica: Callable[[], Coordinator],
) -> None:
    name = "large"
    client = Sessions(replicas[0].address, namespace)
    store = Store(etcd, namespace, name)
    rng = random.Random(3)
    try:
        await client.open(name)
        # incompressible text: the snapshot is about as big as what was typed; push until
        # a compaction made a snapshot of two chunks or more
        writer = Doc(client_id=7)
        pushed: list[tuple[int, bytes]] = []
        for _ in range(10):
            update = appended(writer, random_text(rng, 300 * 1024))
            pushed.append((await client.push(name, update), update))
            if len((await store.read()).snapshot_chunks) >= 2:
                break

        def chunked(stored: Stored) -> bool:
            return compacted(stored) and len(stored.snapshot_chunks) >= 2

        stored = await store.until(chunked, "a snapshot of two chunks or more")
        chunks = [stored.snapshot_chunks[k] for k in sorted(stored.snapshot_chunks)]
        assert all(len(c) <= SNAPSHOT_CHUNK_BYTES for c in chunks)
        assert all(len(c) == SNAPSHOT_CHUNK_BYTES for c in chunks[:-1])
        covered = [u for rev, u in pushed if rev <= stored.snapshot_revision]
        assert b"".join(chunks) == union(*covered).get_update()
        tail = [u for _, u in stored.log.values()]
        expected = union(*(u for _, u in pushed))
        assert union(b"".join(chunks), *tail).get_update() == expected.get_update()

        cold = Sessions(fresh_replica().address, namespace)
        try:
            read = await cold.read(name)
        finally:
            await cold.close()
        assert read.snapshot == expected.get_update()
        assert read.state_vector == expected.get_state()
        assert read.session.snapshot_revision == stored.snapshot_revision
    finally:
        await store.close()
        await client.close()


# --- 4. an idle unload leaves the session at its smallest -----------------------------


async def test_idle_unload_folds_the_log_into_exactly_one_snapshot(
    etcd: EtcdMember, namespace: str, tmp_path: Path
) -> None:
    """A compacted session (snapshot plus a log tail) unloaded when idle: one snapshot,
    no log, no stale chunk left behind, and the state exact."""
    name = "folded"
    replica = start_coordinator(
        tmp_path, "idle", [etcd.endpoint], extra_args=["--session-idle", "1"]
    )
    client = Sessions(replica.address, namespace)
    store = Store(etcd, namespace, name)
    try:
        await client.open(name)
        writer = Doc(client_id=9)
        updates = [appended(writer, random_text(random.Random(i), 40)) for i in range(2300)]
        batches = iter(range(0, len(updates), 100))

        async def pusher() -> None:
            for start in batches:
                for update in updates[start : start + 100]:
                    await client.push(name, update)

        await concurrently(*(pusher() for _ in range(8)))

        def folded(stored: Stored) -> bool:
            return compacted(stored) and not stored.log

        await store.until(folded, "no log and one snapshot after the idle unload")
        # and it stays so: nothing else was in flight for the stop to cut off halfway
        assert replica.terminate() == 0
        stored = await store.read()
        assert folded(stored), f"{len(stored.snapshot_ids)} snapshots, {len(stored.log)} log"
        assert len(stored.snapshot_chunks) == 1
        expected = union(*updates)
        assert next(iter(stored.snapshot_chunks.values())) == expected.get_update()
        replica.start()
        read = await client.read(name)  # loads it again, from the snapshot alone
        assert read.snapshot == expected.get_update()
    finally:
        await store.close()
        await client.close()
        replica.kill()


async def test_idle_unload_folds_a_lone_entry_into_the_snapshot(
    etcd: EtcdMember, namespace: str, tmp_path: Path
) -> None:
    """A session with a snapshot and one log entry behind it, unloaded when idle, is
    folded too: what a later load reads is one snapshot and no log, however the writes
    before fell between compactions."""
    name = "lone"
    replica = start_coordinator(
        tmp_path, "idle-lone", [etcd.endpoint], extra_args=["--session-idle", "1"]
    )
    client = Sessions(replica.address, namespace)
    store = Store(etcd, namespace, name)
    try:
        await client.open(name)
        writer = Doc(client_id=11)
        first = [appended(writer, random_text(random.Random(i), 400)) for i in range(60)]
        for update in first:  # 24 KiB of log: compacted into a snapshot, then unloaded
            await client.push(name, update)
        await store.until(lambda s: compacted(s) and not s.log, "the first snapshot, no log")
        last = appended(writer, "the last word")
        await client.push(name, last)  # loads the session again: one entry behind it
        stored = await store.until(
            lambda s: compacted(s) and not s.log, "the lone entry folded on the idle unload"
        )
        expected = union(*first, last)
        assert b"".join(v for _, v in sorted(stored.snapshot_chunks.items())) == (
            expected.get_update()
        )
    finally:
        await store.close()
        await client.close()
        replica.terminate()
