"""A request_id makes a write apply at most once, whichever replica the retry reaches."""

from __future__ import annotations

import pytest
from accord.client import (
    AsyncClient,
    ConditionFailedError,
    Delete,
    Expect,
    Put,
    RequestIdReusedError,
)

from tests.conftest import make_client
from tests.harness import Coordinator


async def test_retry_on_other_replica_returns_first_result(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    first = await a.kv.put("k", b"v", request_id="req-1")
    retry = await b.kv.put("k", b"v", request_id="req-1")
    assert not first.replayed and retry.replayed
    assert retry.revision == first.revision
    assert retry.kv == first.kv
    current = await a.kv.get("k")
    assert current is not None and current.version == 1  # applied once


async def test_retry_after_later_writes_still_answers_as_first_time(client: AsyncClient) -> None:
    first = await client.kv.put("k", b"mine", request_id="req-2")
    await client.kv.put("k", b"someone else")
    retry = await client.kv.put("k", b"mine", request_id="req-2")
    assert retry.replayed and retry.revision == first.revision
    assert retry.kv is not None and retry.kv.value == b"mine"
    current = await client.kv.get("k")
    assert current is not None and current.value == b"someone else"


async def test_failed_condition_replays_as_failure(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    await a.kv.put("k", b"1")
    with pytest.raises(ConditionFailedError) as first:
        await a.kv.put("k", b"2", expect=Expect(absent=True), request_id="req-3")
    await a.kv.delete("k")  # now the condition would hold...
    with pytest.raises(ConditionFailedError) as retry:
        await b.kv.put("k", b"2", expect=Expect(absent=True), request_id="req-3")
    # ...but the retry gets the first call's answer, and nothing is written.
    assert (
        retry.value.failures[0].current_mod_revision == first.value.failures[0].current_mod_revision
    )
    assert await a.kv.get("k") is None


async def test_request_id_reused_for_a_different_request(client: AsyncClient) -> None:
    await client.kv.put("k", b"v", request_id="req-4")
    with pytest.raises(RequestIdReusedError):
        await client.kv.put("k", b"other value", request_id="req-4")
    current = await client.kv.get("k")
    assert current is not None and current.value == b"v" and current.version == 1


async def test_txn_and_delete_replay(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    await a.kv.put("x", b"old")
    first = await a.kv.txn(
        {"y": Expect(absent=True)}, [Put("y", b"1"), Delete("x")], request_id="t1"
    )
    retry = await b.kv.txn(
        {"y": Expect(absent=True)}, [Put("y", b"1"), Delete("x")], request_id="t1"
    )
    assert retry.replayed and retry.revision == first.revision
    assert retry.kvs[1] is not None and retry.kvs[1].value == b"old"
    gone = await a.kv.delete("y", request_id="d1")
    again = await b.kv.delete("y", request_id="d1")
    assert gone.deleted and again.deleted and again.replayed and again.revision == gone.revision


async def test_request_ids_are_scoped_per_agent(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with (
        make_client([replicas[0].address], namespace, agent="one") as one,
        make_client([replicas[1].address], namespace, agent="two") as two,
    ):
        await one.kv.put("k", b"1", request_id="same")
        second = await two.kv.put("k", b"2", request_id="same")
        assert not second.replayed
        current = await one.kv.get("k")
        assert current is not None and current.version == 2
