"""Every Sessions response fits a standard gRPC client (4 MiB), seen with raw stubs on
gRPC's default channel settings: a document is kept under --session-max-bytes (3 MiB of
encoded state by default), a push or an operation that would take it past is refused
with RESOURCE_EXHAUSTED and a QuotaFailure, storing nothing, deletions still go through;
and a document that got larger anyway (here: grown through a replica without the limit)
answers Read, Sync and Subscribe with that clear refusal instead of a transport error."""

from __future__ import annotations

import asyncio
import json
import random
import string
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pycrdt import Doc, Text, create_update_message
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from accord.v1 import sessions_pb2
from tests.harness import (
    Coordinator,
    EtcdMember,
    Stubs,
    identity,
    start_coordinator,
    token_for,
)

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
CHUNK = 480 * 1024  # characters per update: under the 512 KiB update limit
WAIT = 60.0
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"


class Writer:
    """One Yjs client appending random text, an update at a time."""

    def __init__(self, seed: int) -> None:
        self.doc: Doc[Any] = Doc(client_id=seed)
        self.text = self.doc.get("notes", type=Text)
        self.rng = random.Random(seed)

    def append(self, size: int) -> bytes:
        before = self.doc.get_state()
        self.text += "".join(self.rng.choices(string.ascii_letters, k=size))
        return self.doc.get_update(before)

    def delete_first(self, size: int) -> bytes:
        before = self.doc.get_state()
        del self.text[0:size]
        return self.doc.get_update(before)


def _refusal(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure.Violation:
    """The QuotaFailure of a RESOURCE_EXHAUSTED our coordinator sent (not the transport)."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status: {error.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            return failure.violations[0]
    raise AssertionError(f"no QuotaFailure in {status}")


async def _push(stubs: Stubs, metadata: Any, name: str, update: bytes) -> None:
    request = sessions_pb2.SessionsPushRequest(name=name, update=update)
    await stubs.sessions.Push(request, metadata=metadata, timeout=WAIT)


async def _sync(stubs: Stubs, metadata: Any, name: str, vector: bytes = b"") -> Any:
    request = sessions_pb2.SessionsSyncRequest(name=name, state_vector=vector)
    return await stubs.sessions.Sync(request, metadata=metadata, timeout=WAIT)


def _stored(etcd: EtcdMember, namespace: str) -> list[bytes]:
    """Every value etcd holds for the namespace's sessions (read straight from etcd)."""
    return [kv.value for kv in etcd.kvs(f"accord/ns/{namespace}/sdata/", prefix=True)]


async def test_a_push_past_the_session_limit_is_refused_and_stores_nothing(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    metadata = identity(namespace, "writer")
    name = "full"
    writer = Writer(7)
    async with Stubs(replicas[0].address) as stubs:  # gRPC's default channel settings
        await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name=name), metadata=metadata)
        for _ in range(5):  # 2.8 MiB in 6 pushes: under the 3 MiB default
            await _push(stubs, metadata, name, writer.append(CHUNK))
        last = sessions_pb2.SessionsPushRequest(
            name=name, update=writer.append(CHUNK), request_id="the-sixth"
        )
        first = await stubs.sessions.Push(last, metadata=metadata, timeout=WAIT)
        before = await _sync(stubs, metadata, name)
        assert before.ByteSize() < DEFAULT_MAX_MESSAGE
        refused = writer.append(CHUNK)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _push(stubs, metadata, name, refused)
        violation = _refusal(caught.value)
        # ... while a retry of an accepted push (its request_id) gets its first answer.
        again = await stubs.sessions.Push(last, metadata=metadata, timeout=WAIT)
        assert again.header.revision == first.header.revision
        assert violation.subject == f"session:{namespace}/{name}"
        assert violation.description == "session_max_bytes"
        assert "--session-max-bytes" in (caught.value.details() or "")
        # Nothing stored: the other replica's document lacks nothing it had before.
        async with Stubs(replicas[1].address) as other:
            after = await _sync(other, metadata, name, before.state_vector)
            assert after.state_vector == before.state_vector
            assert refused not in _stored(etcd, namespace)
            read = await other.sessions.Read(
                sessions_pb2.SessionsReadRequest(name=name), metadata=metadata, timeout=WAIT
            )
        assert read.ByteSize() < DEFAULT_MAX_MESSAGE
        # Snapshot and JSON (2.8 MiB each) do not fit together: the JSON comes alone.
        assert read.snapshot_omitted and not read.snapshot
        assert len(json.loads(read.json)["notes"]) == 6 * CHUNK
        # Over y-websocket: the socket is closed with 4413 (not retried), nothing stored.
        token = token_for(namespace, "writer")
        auth = {} if token is None else {"subprotocols": [Subprotocol(token)]}
        url = f"{replicas[1].ws_url}/{namespace}/{name}"
        socket = await connect(url, open_timeout=WAIT, max_size=None, **auth)
        await socket.send(SYNC_STEP1_EMPTY)
        await socket.send(create_update_message(refused))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(WAIT):
                while True:
                    await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4413
        assert "--session-max-bytes" in closed.value.rcvd.reason, closed.value.rcvd.reason
        after = await _sync(stubs, metadata, name, before.state_vector)
        assert after.state_vector == before.state_vector
        assert refused not in _stored(etcd, namespace)
        # A document at its limit can still be trimmed, and then grows again.
        await _push(stubs, metadata, name, writer.delete_first(3 * CHUNK))
        await _push(stubs, metadata, name, refused)
        trimmed = await _sync(stubs, metadata, name)
        assert trimmed.ByteSize() < DEFAULT_MAX_MESSAGE


async def test_operations_past_the_session_limit_are_refused(
    replicas: list[Coordinator], namespace: str
) -> None:
    metadata = identity(namespace, "writer")
    name = "full-ops"
    writer = Writer(8)
    async with Stubs(replicas[1].address) as stubs:
        await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name=name), metadata=metadata)
        for _ in range(6):
            await _push(stubs, metadata, name, writer.append(CHUNK))
        before = await _sync(stubs, metadata, name)
        insert = sessions_pb2.Operation(
            root="notes", text_insert=sessions_pb2.TextInsert(index=0, text="x" * CHUNK)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.sessions.Apply(
                sessions_pb2.SessionsApplyRequest(name=name, operations=[insert]),
                metadata=metadata,
                timeout=WAIT,
            )
        assert _refusal(caught.value).description == "session_max_bytes"
        after = await _sync(stubs, metadata, name, before.state_vector)
        assert after.state_vector == before.state_vector


async def test_a_document_grown_past_the_limit_anyway_is_refused_clearly(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str, tmp_path: Path
) -> None:
    """Grown to ~5 MiB through a replica with no limit (as older data would be): the
    default replica answers Read, Sync and Subscribe with RESOURCE_EXHAUSTED and a
    QuotaFailure naming response_bytes, not "received message larger than max"; it
    refuses more content but takes deletions, after which the document reads again."""
    metadata = identity(namespace, "writer")
    name = "grown"
    writer = Writer(9)
    unlimited = start_coordinator(
        tmp_path, "unlimited", [etcd.endpoint], extra_args=["--session-max-bytes", "0"]
    )
    try:
        big = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with Stubs(unlimited.address, options=big) as stubs:
            await stubs.sessions.Open(
                sessions_pb2.SessionsOpenRequest(name=name), metadata=metadata, timeout=WAIT
            )
            for _ in range(11):
                await _push(stubs, metadata, name, writer.append(CHUNK))
    finally:
        unlimited.terminate()
    async with Stubs(replicas[0].address) as stubs:
        calls = {
            "Read": stubs.sessions.Read(
                sessions_pb2.SessionsReadRequest(name=name), metadata=metadata, timeout=WAIT
            ),
            "Sync": _sync(stubs, metadata, name),
        }
        for method, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert _refusal(caught.value).description == "response_bytes", method
        stream = stubs.sessions.Subscribe(
            sessions_pb2.SessionsSubscribeRequest(name=name), metadata=metadata, timeout=WAIT
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert _refusal(caught.value).description == "response_bytes"
        # An update to the grown document is refused as well; deletions are not, and
        # once trimmed it reads again.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _push(stubs, metadata, name, writer.append(1024))
        assert _refusal(caught.value).description == "session_max_bytes"
        await _push(stubs, metadata, name, writer.delete_first(8 * CHUNK))
        trimmed = await _sync(stubs, metadata, name)
        assert trimmed.ByteSize() < DEFAULT_MAX_MESSAGE
        read = await stubs.sessions.Read(
            sessions_pb2.SessionsReadRequest(name=name), metadata=metadata, timeout=WAIT
        )
        assert len(json.loads(read.json)["notes"]) == 3 * CHUNK
