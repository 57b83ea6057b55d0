"""An update stored before what it builds on (a client's later clocks pushed first, as a
retry or a failover can order them) stays pending, and compaction must not fold it away:
the document's encoding leaves pending structs out, so deleting its log entry would lose
it. After a compaction, the earlier update arrives, and every replica (one loading the
session from etcd afresh) holds both."""

from __future__ import annotations

import json
from typing import Any

from pycrdt import Doc, Text

from accord.v1 import records_pb2, sessions_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity, until

WAIT = 30.0


async def test_a_pending_update_survives_compaction(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    metadata = identity(namespace, "writer")
    name = "pending"
    writer: Doc[Any] = Doc(client_id=7)
    text = writer.get("notes", type=Text)
    text += "abc"
    first = writer.get_update()
    seen = writer.get_state()
    text += "defg"
    later = writer.get_update(seen)  # builds on first: pending without it
    filler: Doc[Any] = Doc(client_id=8)
    other = filler.get("other", type=Text)

    async def push(stubs: Stubs, update: bytes) -> None:
        request = sessions_pb2.SessionsPushRequest(name=name, update=update)
        await stubs.sessions.Push(request, metadata=metadata, timeout=WAIT)

    async def snapshot_revision() -> int:
        meta = etcd.kvs(f"accord/ns/{namespace}/sessions/{name}")
        return records_pb2.SessionRecord.FromString(meta[0].value).snapshot_revision

    async with Stubs(replicas[0].address) as stubs:
        await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name=name), metadata=metadata)
        await push(stubs, later)
        for _ in range(10):  # 40 KiB of log: past the 16 KiB that starts a compaction
            before = filler.get_state()
            other += "x" * 4000
            await push(stubs, filler.get_update(before))
        await until(snapshot_revision, lambda revision: revision > 0, "a compaction", WAIT)
        stored = [kv.value for kv in etcd.kvs(f"accord/ns/{namespace}/sdata/", prefix=True)]
        assert later in stored, "the pending update's log entry was compacted away"
        await push(stubs, first)
    for replica in replicas:  # replica 1 loads the session from etcd now
        async with Stubs(replica.address) as reader:
            read = await reader.sessions.Read(
                sessions_pb2.SessionsReadRequest(name=name), metadata=metadata, timeout=WAIT
            )
        assert json.loads(read.json)["notes"] == "abcdefg", replica.address
