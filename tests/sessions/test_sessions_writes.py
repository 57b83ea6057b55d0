"""Session writes are safe to retry and fenced: a replayed request_id answers as the first
time and applies nothing again; a stale lock fence stores nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pycrdt import Doc, Text

from accord.client import (
    AsyncClient,
    FencedError,
    Lease,
    RequestIdReusedError,
    SessionEvent,
    UpdateEvent,
    ops,
)
from accord.v1.records_pb2 import IdempotencyRecord
from tests.harness import EtcdMember, until


def text_update(content: str) -> bytes:
    doc = Doc()
    text = doc.get("notes", type=Text)
    text += content
    return doc.get_update()


async def next_update(events: AsyncIterator[SessionEvent]) -> UpdateEvent:
    async for event in events:
        if isinstance(event, UpdateEvent):
            return event
    raise AssertionError("the stream ended")


@pytest.fixture
async def leases(client: AsyncClient) -> AsyncIterator[list[Lease]]:
    granted = [await client.leases.grant(ttl=10) for _ in range(2)]
    yield granted
    for lease in granted:
        await lease.revoke()


async def test_replayed_push_answers_the_same_and_stores_once(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    await a.sessions.open("retry")
    events = b.sessions.subscribe("retry")
    await next_update(events)
    update = text_update("once")
    first = await a.sessions.push("retry", update, request_id="push-1")
    again = await b.sessions.push("retry", update, request_id="push-1")  # other replica
    assert again == first
    assert (await next_update(events)).revision == first
    assert (await b.sessions.read("retry")).revision == first  # nothing stored since
    marker = await a.sessions.push("retry", text_update("marker"))
    # The replay broadcast nothing: the event after the first push is the marker.
    assert (await next_update(events)).revision == marker
    with pytest.raises(RequestIdReusedError):
        await a.sessions.push("retry", text_update("different"), request_id="push-1")
    await events.aclose()


async def test_a_push_with_request_id_is_one_etcd_write(
    client: AsyncClient, etcd: EtcdMember, namespace: str
) -> None:
    """A push's answer is its revision, which its record's revision gives: the record is
    written once, with the update, and a retry is answered from it."""
    await client.sessions.open("once")
    update = text_update("a")
    first = await client.sessions.push("once", update, request_id="push-once")
    # A background write of the answer would be queued before this one is sent.
    await client.sessions.push("once", text_update("b"))
    record = etcd.idempotency_records(namespace, "tester")["push-once"]
    assert (record.version, record.mod_revision) == (1, first)
    assert not IdempotencyRecord.FromString(record.value).answer
    assert await client.sessions.push("once", update, request_id="push-once") == first


async def test_replayed_apply_applies_once(
    pinned: list[AsyncClient], etcd: EtcdMember, namespace: str
) -> None:
    a, b = pinned
    await a.sessions.open("apply-retry")
    insert = ops.text_insert("notes", 0, "ab")
    first = await a.sessions.apply("apply-retry", insert, request_id="apply-1")

    async def answer_stored() -> bool:
        record = etcd.idempotency_records(namespace, "tester").get("apply-1")
        return record is not None and bool(IdempotencyRecord.FromString(record.value).answer)

    # An Apply's answer (its update bytes) is added to its record just after the commit;
    # a retry racing that gets the rebuilt answer, without the bytes (README known gaps).
    await until(answer_stored, lambda stored: stored, "the apply's answer stored", 10)
    again = await b.sessions.apply("apply-retry", insert, request_id="apply-1")
    assert again == first  # same revision, same update bytes
    state = await b.sessions.read("apply-retry")
    assert state.json == {"notes": "ab"}  # inserted once, not "abab"
    once = Doc()
    once.apply_update(first.update)
    assert state.snapshot == once.get_update()  # nothing but the first apply's items
    with pytest.raises(RequestIdReusedError):
        await a.sessions.apply(
            "apply-retry", ops.text_insert("notes", 0, "x"), request_id="apply-1"
        )


async def test_stale_fence_stores_nothing(client: AsyncClient, leases: list[Lease]) -> None:
    await client.sessions.open("fenced")
    old = await client.locks.acquire("fenced-doc", leases[0])
    pushed = await client.sessions.push("fenced", text_update("by old "), fence=old)
    applied = await client.sessions.apply(
        "fenced", ops.map_set("meta", "holder", "old"), fence=old, request_id="fenced-apply"
    )
    assert applied.revision > pushed
    await client.locks.release(old)
    new = await client.locks.acquire("fenced-doc", leases[1])
    before = await client.sessions.read("fenced")

    with pytest.raises(FencedError) as err:
        await client.sessions.push("fenced", text_update("stale"), fence=old)
    assert err.value.current_tokens == [new.token]
    with pytest.raises(FencedError):
        await client.sessions.apply("fenced", ops.map_set("meta", "holder", "stale"), fence=old)
    after = await client.sessions.read("fenced")
    assert after.snapshot == before.snapshot and after.revision == before.revision
    assert after.json == {"notes": "by old ", "meta": {"holder": "old"}}

    # A retry of a write made while the fence held still answers as the first time.
    replay = await client.sessions.apply(
        "fenced", ops.map_set("meta", "holder", "old"), fence=old, request_id="fenced-apply"
    )
    assert replay == applied
    # The current holder's fence works.
    await client.sessions.apply("fenced", ops.map_set("meta", "holder", "new"), fence=new)
    assert (await client.sessions.read("fenced")).json["meta"] == {"holder": "new"}


async def test_refused_fenced_push_replays_as_refused(
    client: AsyncClient, leases: list[Lease]
) -> None:
    await client.sessions.open("fenced-replay")
    old = await client.locks.acquire("lock", leases[0])
    await client.locks.release(old)
    update = text_update("late")
    for _ in range(2):  # the retry gets the first answer: refused, still nothing stored
        with pytest.raises(FencedError):
            await client.sessions.push("fenced-replay", update, fence=old, request_id="late-1")
    assert (await client.sessions.read("fenced-replay")).json == {}


async def test_synced_session_with_a_stale_fence_reports_it(
    client: AsyncClient, leases: list[Lease]
) -> None:
    await client.sessions.open("fenced-live")
    grant = await client.locks.acquire("fenced-live", leases[0])
    async with client.sessions.synced("fenced-live", fence=grant) as live:
        text = live.doc.get("notes", type=Text)
        text += "held"
        await live.flush(10)
        await client.locks.release(grant)
        text += " lost"
        with pytest.raises(FencedError):
            await live.flush(10)
        assert isinstance(live.error, FencedError)
    assert (await client.sessions.read("fenced-live")).json == {"notes": "held"}


async def test_writes_survive_their_retention_lease_being_revoked(
    client: AsyncClient, pinned: list[AsyncClient], etcd: EtcdMember, namespace: str
) -> None:
    """Idempotency records hang on a retention lease; when it is gone (revoked by hand,
    a reset cluster), pushes, applies and deletes with a request_id take a fresh one."""
    await client.sessions.open("kept")
    for i, c in enumerate(pinned):  # both replicas hold one now
        await c.sessions.push("kept", text_update("warm"), request_id=f"warm-up-{i}")
    # only this namespace's leases: other tests' records share the session etcd
    assert etcd.revoke_leases_of(namespace) == len(pinned)
    update = text_update("a")
    revision = await client.sessions.push("kept", update, request_id="after-revoke")
    assert await client.sessions.push("kept", update, request_id="after-revoke") == revision
    applied = await client.sessions.apply(
        "kept", ops.text_insert("notes", 0, "b"), request_id="apply-after-revoke"
    )
    assert applied.revision > revision
    assert await client.sessions.delete("kept", request_id="delete-after-revoke")
