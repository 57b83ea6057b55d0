"""Deeply nested Yjs content: a valid update nesting maps 1,000 deep is refused at Push
(gRPC and y-websocket) with INVALID_ARGUMENT, nothing is stored, and the session reads
as before. A document that gets deep anyway, one shallow update at a time, still reads
(the JSON view is clipped below 64 levels) instead of failing with INTERNAL forever."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pycrdt import Array, Doc, Map, create_update_message
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from accord.coordinator.sessions.nesting import CLIPPED, MAX_NESTING
from accord.v1 import sessions_pb2
from tests.harness import Coordinator, EtcdMember, Stubs, identity, token_for

WAIT = 10.0
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"


def _nest(node: Map[Any], levels: int) -> Map[Any]:
    """levels maps, each inside the one before, under node; the innermost."""
    for _ in range(levels):
        node["c"] = Map()
        node = node["c"]
    return node


def deep_update(levels: int) -> bytes:
    doc: Doc[Any] = Doc()
    _nest(doc.get("board", type=Map), levels)
    return doc.get_update()


async def _read(stubs: Stubs, metadata: Any) -> sessions_pb2.SessionsReadResponse:
    request = sessions_pb2.SessionsReadRequest(name="deep")
    answer: sessions_pb2.SessionsReadResponse = await stubs.sessions.Read(
        request, metadata=metadata, timeout=WAIT
    )
    return answer


async def test_a_thousand_deep_update_is_refused_and_the_session_still_reads(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    metadata = identity(namespace, "tester")
    async with Stubs(replicas[0].address) as stubs:
        await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name="deep"), metadata=metadata)
        shallow = deep_update(3)
        await stubs.sessions.Push(
            sessions_pb2.SessionsPushRequest(name="deep", update=shallow), metadata=metadata
        )
        before_read = await _read(stubs, metadata)
        before = etcd.stored(namespace)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.sessions.Push(
                sessions_pb2.SessionsPushRequest(name="deep", update=deep_update(1000)),
                metadata=metadata,
                timeout=WAIT,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        status = rpc_status.from_call(err.value)
        info = error_details_pb2.ErrorInfo()
        assert status is not None and any(d.Unpack(info) for d in status.details)
        assert info.reason == "INVALID_ARGUMENT"
        assert "update" in (err.value.details() or "")
        assert str(MAX_NESTING) in (err.value.details() or "")

        # Over y-websocket: the socket is closed with 4400 and a reason.
        token = token_for(namespace, "tester")
        auth = {} if token is None else {"subprotocols": [Subprotocol(token)]}
        socket = await connect(f"{replicas[1].ws_url}/{namespace}/deep", open_timeout=WAIT, **auth)
        await socket.send(SYNC_STEP1_EMPTY)
        await socket.send(create_update_message(deep_update(1000)))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(WAIT):
                while True:
                    await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
        assert "deep" in closed.value.rcvd.reason, closed.value.rcvd.reason

        assert etcd.stored(namespace) == before, "a refused update was stored"
        after = await _read(stubs, metadata)
        assert (after.json, after.header.revision) == (
            before_read.json,
            before_read.header.revision,
        )


async def test_a_document_deepened_update_by_update_still_reads(
    replicas: list[Coordinator], namespace: str
) -> None:
    """Each update nests 50 more levels below the last: each is shallow, the whole is
    1,000 deep. Read keeps working, showing the first 64 levels."""
    metadata = identity(namespace, "tester")
    doc: Doc[Any] = Doc()
    node = doc.get("board", type=Map)
    async with Stubs(replicas[0].address) as stubs:
        await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name="deep"), metadata=metadata)
        for _ in range(20):
            seen = doc.get_state()
            node = _nest(node, 50)
            update = doc.get_update(seen)
            await stubs.sessions.Push(
                sessions_pb2.SessionsPushRequest(name="deep", update=update),
                metadata=metadata,
                timeout=WAIT,
            )
        for replica in replicas:  # every replica renders it
            async with Stubs(replica.address) as other:
                view = json.loads((await _read(other, metadata)).json)
            level, value = 1, view["board"]
            while isinstance(value, dict):
                level, value = level + 1, value["c"]
            assert value == CLIPPED and level == MAX_NESTING + 1, (level, value)


def wide_update(items: int, maps: int) -> bytes:
    """An array of items inserted one by one at its front (each its own block, the
    costliest to read item by item), beside maps sibling maps (nested types, shallow)."""
    doc: Doc[Any] = Doc()
    wide = doc.get("wide", type=Array)
    for i in range(items):
        wide.insert(0, i)
    board = doc.get("board", type=Map)
    for i in range(maps):
        board[f"m{i}"] = Map()
    return doc.get_update()


async def test_a_wide_update_costs_no_quadratic_walk(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    """Few nested types cannot nest too deep: 25,000 separately inserted items are not
    read one by one (seconds of CPU), and are accepted. With enough nested types to
    need the walk and too many items to afford it, the update is refused, not walked."""
    metadata = identity(namespace, "tester")
    async with Stubs(replicas[0].address) as stubs:
        await stubs.sessions.Open(sessions_pb2.SessionsOpenRequest(name="wide"), metadata=metadata)
        flat = wide_update(25_000, 3)
        await stubs.sessions.Push(
            sessions_pb2.SessionsPushRequest(name="wide", update=flat), metadata=metadata
        )
        costly = wide_update(12_000, MAX_NESTING)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.sessions.Push(
                sessions_pb2.SessionsPushRequest(name="wide", update=costly), metadata=metadata
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "too many to check" in (refused.value.details() or "")
        read = await stubs.sessions.Read(
            sessions_pb2.SessionsReadRequest(name="wide"), metadata=metadata, timeout=30
        )
    # The refused update stored nothing (its 64 maps and 12,000 items are not there; a
    # snapshot of the first push may be written meanwhile, so etcd's keys may move).
    view = json.loads(read.json)
    assert len(view["wide"]) == 25_000 and len(view["board"]) == 3
