"""Sessions: open/list/delete, Sync and Subscribe across replicas, and agents editing one
document concurrently through both replicas until every copy is identical."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text, get_state

from accord.client import (
    AsyncClient,
    Client,
    ConditionFailedError,
    NotFoundError,
    RootKind,
    UpdateEvent,
    ops,
)
from tests.harness import Coordinator, make_client, token_for


def text_update(content: str, *, doc: Doc[Any] | None = None, root: str = "notes") -> bytes:
    """A Yjs update that appends content to root (on a fresh doc unless given one)."""
    doc = doc if doc is not None else Doc()
    before = doc.get_state()
    text = doc.get(root, type=Text)
    text += content
    return doc.get_update(before)


def clocks(state_vector: bytes) -> dict[int, int]:
    """A Yjs state vector decoded: client id -> clock. (Its byte order follows a hash
    map, so two equal state vectors may encode differently.)"""
    position = 0

    def varuint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = state_vector[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    count = varuint()
    decoded = {}
    for _ in range(count):
        client = varuint()
        decoded[client] = varuint()
    assert position == len(state_vector)
    return decoded


async def next_update(events: Any) -> UpdateEvent:
    async with asyncio.timeout(10):
        async for event in events:
            if isinstance(event, UpdateEvent):
                return event
    raise AssertionError("the stream ended")


# --- open, list, delete ------------------------------------------------------------------


async def test_open_is_idempotent_and_declares_roots(client: AsyncClient) -> None:
    first = await client.sessions.open("plan", roots={"tasks": RootKind.MAP})
    assert first.created and first.name == "plan" and first.created_by.agent_id == "tester"
    again = await client.sessions.open("plan", roots={"notes": "text"})
    assert not again.created and again.created_revision == first.created_revision
    assert again.roots == {"tasks": RootKind.MAP, "notes": RootKind.TEXT}
    with pytest.raises(ConditionFailedError):  # a declared root keeps its kind
        await client.sessions.open("plan", roots={"tasks": RootKind.ARRAY})
    with pytest.raises(NotFoundError):
        await client.sessions.open("absent", must_exist=True)
    assert [s.name for s in await client.sessions.list()] == ["plan"]


async def test_list_pages_through_every_session(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    names = [f"s/{i:02d}" for i in range(12)]
    for i, name in enumerate(names):
        await pinned[i % 2].sessions.open(name)
    await a.sessions.open("t/other")
    listed = await b.sessions.list("s/")
    assert [s.name for s in listed] == names
    assert [s.name for s in await a.sessions.list("s/", limit=5)] == names[:5]
    assert len(await a.sessions.list()) == 13
    # Small pages, fetched one after another, still see everything exactly once.
    assert [s.name for s in await b.sessions.list("s/", page_size=5)] == names
    assert [s.name for s in await b.sessions.list("s/", limit=7, page_size=5)] == names[:7]


async def test_delete_condition_and_fresh_incarnation(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    old = await a.sessions.open("doc")
    await a.sessions.push("doc", text_update("old content"))
    with pytest.raises(ConditionFailedError) as err:
        await b.sessions.delete("doc", expected_created_revision=old.created_revision + 1)
    assert err.value.metadata["created_revision"] == str(old.created_revision)
    assert (await b.sessions.read("doc")).json == {"notes": "old content"}  # still there
    assert await b.sessions.delete("doc", expected_created_revision=old.created_revision)
    assert not await a.sessions.delete("doc")  # already gone
    with pytest.raises(NotFoundError):
        await a.sessions.read("doc")
    with pytest.raises(NotFoundError):
        await b.sessions.push("doc", text_update("x"))

    new = await b.sessions.open("doc")
    assert new.created and new.created_revision > old.created_revision
    for replica in pinned:  # neither replica serves the old incarnation's content
        state = await replica.sessions.read("doc")
        assert state.json == {} and state.info.created_revision == new.created_revision
    with pytest.raises(ConditionFailedError):  # the old incarnation's revision no longer fits
        await a.sessions.delete("doc", expected_created_revision=old.created_revision)


async def test_delete_ends_subscriptions_not_found(pinned: list[AsyncClient]) -> None:
    a, b = pinned
    await a.sessions.open("short-lived")
    events = b.sessions.subscribe("short-lived")
    await next_update(events)
    await a.sessions.delete("short-lived")
    with pytest.raises(NotFoundError):
        await next_update(events)


# --- sync, push, subscribe ---------------------------------------------------------------


async def test_push_on_one_replica_reaches_a_subscriber_on_the_other(
    pinned: list[AsyncClient],
) -> None:
    a, b = pinned
    await a.sessions.open("live")
    events = b.sessions.subscribe("live", presence=False)
    first = await next_update(events)  # subscribed: nothing can slip past from here on
    assert first.update == Doc().get_update()
    update = text_update("hello from A")
    revision = await a.sessions.push("live", update)
    seen = await next_update(events)
    assert seen.revision == revision and seen.update == update
    await events.aclose()


async def test_sync_returns_exactly_what_a_state_vector_lacks(client: AsyncClient) -> None:
    await client.sessions.open("sync")
    mine = Doc()
    first = text_update("one ", doc=mine)
    await client.sessions.push("sync", first)
    known = mine.get_state()
    second = text_update("two", doc=mine)
    await client.sessions.push("sync", second)

    missing = await client.sessions.sync("sync", known)
    assert missing.state_vector == mine.get_state()
    assert missing.update == second  # exactly the second edit, nothing before it
    nothing = await client.sessions.sync("sync", mine.get_state())
    assert get_state(nothing.update) == b"\x00" and nothing.update == Doc().get_update()
    everything = await client.sessions.sync("sync")
    fresh = Doc()
    fresh.apply_update(everything.update)
    assert str(fresh.get("notes", type=Text)) == "one two"
    # The server's state vector says what to push back: here, only what it lacks.
    other = Doc()
    other.apply_update(everything.update)
    text_update("!", doc=other)
    lacking = other.get_update(everything.state_vector)
    await client.sessions.push("sync", lacking)
    assert (await client.sessions.read("sync")).json == {"notes": "one two!"}


async def test_subscribe_from_a_state_vector_starts_with_the_gap(
    pinned: list[AsyncClient],
) -> None:
    a, b = pinned
    await a.sessions.open("gap")
    mine = Doc()
    await a.sessions.push("gap", text_update("seen ", doc=mine))
    known = mine.get_state()
    unseen = text_update("unseen", doc=mine)
    revision = await a.sessions.push("gap", unseen)
    events = b.sessions.subscribe("gap", known)
    first = await next_update(events)
    assert first.update == unseen and first.revision >= revision
    await events.aclose()


# --- the synced document -----------------------------------------------------------------


async def test_session_context_keeps_a_doc_in_sync(
    replicas: list[Coordinator], namespace: str
) -> None:
    async with (
        make_client([replicas[0].address], namespace, agent="a") as a,
        make_client([replicas[1].address], namespace, agent="b") as b,
    ):
        await a.sessions.open("shared", roots={"notes": RootKind.TEXT})
        await a.sessions.push("shared", text_update("before "))
        async with a.session("shared") as doc_a, b.session("shared") as doc_b:
            # Current on entry: what was pushed before is already there.
            assert str(doc_a.get("notes", type=Text)) == "before "
            assert str(doc_b.get("notes", type=Text)) == "before "
            changes: list[str] = []
            text_b = doc_b.get("notes", type=Text)
            text_b.observe(lambda event: changes.append(str(text_b)))

            text_a = doc_a.get("notes", type=Text)
            text_a += "after"
            revision = await a.sessions.flush(doc_a)
            assert revision > 0
            live_b = b.sessions._live[id(doc_b)]
            await live_b.wait_for(revision, timeout=10)
            assert str(text_b) == "before after" and changes[-1] == "before after"
            # Remote updates are not echoed: one push from A, none from B.
            assert live_b.acked_revision == 0
            tasks = doc_b.get("tasks", type=Map)
            tasks["t1"] = "review"
        # Leaving flushes: B's change is durable once the block ends.
        state = await a.sessions.read("shared")
        assert state.json == {"notes": "before after", "tasks": {"t1": "review"}}


async def test_a_doc_edited_offline_joins_and_merges(client: AsyncClient) -> None:
    await client.sessions.open("offline")
    await client.sessions.apply("offline", ops.map_set("board", "online", True))
    offline: Doc[Any] = Doc()
    offline.get("board", type=Map)["offline"] = True
    async with client.sessions.synced("offline", doc=offline) as live:
        assert live.doc is offline
        assert offline.get("board", type=Map).to_py() == {"online": True, "offline": True}
        await live.flush(10)
        assert (await client.sessions.read("offline")).json == {
            "board": {"offline": True, "online": True}
        }


async def test_synced_session_resubscribes_after_its_replica_stops(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    first, second = live_replicas
    async with (
        make_client([first.address, second.address], namespace, agent="roamer") as roamer,
        make_client([second.address], namespace, agent="writer") as writer,
    ):
        await writer.sessions.open("roam")
        async with roamer.sessions.synced("roam") as live:
            text = live.doc.get("notes", type=Text)
            text += "one "
            await live.flush(10)
            first.terminate()  # the roamer's replica goes away under its stream
            revision = await writer.sessions.push("roam", text_update("two", doc=Doc()))
            await live.wait_for(revision, timeout=20)  # resubscribed on the other replica
            text += "!"
            await live.flush(20)
        state = await writer.sessions.read("roam")
        assert clocks(state.state_vector) == clocks(live.doc.get_state())
        words = state.json["notes"]
        assert words == str(text) and words.endswith("!")  # appended after both edits
        assert words[:-1] in ("one two", "twoone ")  # concurrent inserts, in either order


async def test_synced_session_loses_no_edit_when_its_replica_crashes(
    live_replicas: list[Coordinator], namespace: str
) -> None:
    first, second = live_replicas
    async with (
        make_client([first.address, second.address], namespace, agent="roamer") as roamer,
        make_client([second.address], namespace, agent="reader") as reader,
    ):
        async with roamer.sessions.synced("crash") as live:
            log = live.doc.get("log", type=Array)
            for i in range(40):
                log.append(i)
                if i == 20:
                    first.kill()  # pushes in flight now are resent elsewhere, once
                await asyncio.sleep(0)
            await live.flush(30)
        state = await reader.sessions.read("crash")
        assert state.json == {"log": list(range(40))}
        assert state.snapshot == live.doc.get_update()


# --- convergence ---------------------------------------------------------------------------


async def test_ten_agents_converge_through_two_replicas(
    replicas: list[Coordinator], namespace: str
) -> None:
    agents = [
        make_client([replicas[i % 2].address], namespace, agent=f"agent-{i}") for i in range(10)
    ]
    try:
        await agents[0].sessions.open("together")
        lives = [agent.sessions.synced("together") for agent in agents]
        for live in lives:
            await live.start()
        rng = random.Random(4)

        async def edit(i: int) -> int:
            live = lives[i]
            text = live.doc.get("notes", type=Text)
            board = live.doc.get("board", type=Map)
            log = live.doc.get("log", type=Array)
            for step in range(12):
                # Between two markers, so every marker stays whole after merging.
                current = str(text)
                position = rng.choice([0, *(k + 1 for k, c in enumerate(current) if c == ">")])
                text.insert(position, f"<{i}.{step}>")
                board[f"agent-{i}"] = step
                board["last"] = f"{i}.{step}"  # every agent fights over one key
                log.append(f"{i}.{step}")
                if step % 3 == 0:
                    await asyncio.sleep(0)  # let pushes and remote updates interleave
            return await live.flush(20)

        acked = await asyncio.gather(*(edit(i) for i in range(10)))
        newest = max(acked)
        for live in lives:
            await live.wait_for(newest, timeout=20)

        reads = [await agent.sessions.read("together") for agent in agents[:2]]
        assert reads[0].snapshot == reads[1].snapshot  # byte-identical on both replicas
        assert clocks(reads[0].state_vector) == clocks(reads[1].state_vector)
        assert reads[0].json == reads[1].json
        view = reads[0].json
        assert len(view["log"]) == 120 and sorted(view["log"]) == sorted(
            f"{i}.{s}" for i in range(10) for s in range(12)
        )
        assert all(view["board"][f"agent-{i}"] == 11 for i in range(10))
        assert all(f"<{i}.{s}>" in view["notes"] for i in range(10) for s in range(12))
        for live in lives:
            assert clocks(live.doc.get_state()) == clocks(reads[0].state_vector)
            local = {
                "notes": str(live.doc.get("notes", type=Text)),
                "board": live.doc.get("board", type=Map).to_py(),
                "log": live.doc.get("log", type=Array).to_py(),
            }
            assert local == view
            # Every agent's whole state encodes to the very bytes both replicas hold.
            assert live.doc.get_update() == reads[0].snapshot
        for live in lives:
            await live.close()
    finally:
        for agent in agents:
            await agent.close()


def test_blocking_client_mirrors_sessions(replicas: list[Coordinator], namespace: str) -> None:
    addresses = [r.address for r in replicas]
    token = token_for(namespace, "blocking")  # None (ACCORD_TOKEN) unless ACCORD_TEST_AUTH
    with Client(addresses, agent_id="blocking", namespace=namespace, token=token) as accord:
        info = accord.sessions.open("plain", roots={"notes": "text"})
        assert info.created and accord.sessions.list() == [dataclasses.replace(info, created=False)]
        events = accord.sessions.subscribe("plain")
        try:
            assert isinstance(next(events), UpdateEvent)
            update = text_update("typed ")
            revision = accord.sessions.push("plain", update)
            assert next(events) == UpdateEvent(revision, update)
            applied = accord.sessions.apply("plain", ops.text_insert("notes", 6, "by hand"))
            assert next(events) == UpdateEvent(applied.revision, applied.update)
        finally:
            events.close()
        state = accord.sessions.read("plain")
        assert state.json == {"notes": "typed by hand"}
        assert accord.sessions.sync("plain").state_vector == state.state_vector
        lease = accord.leases.grant(ttl=10)
        presence = accord.sessions.set_presence("plain", lease, {"typing": True})
        assert accord.sessions.read("plain").presence == [presence]
        with pytest.warns(DeprecationWarning, match=r"lease\.revoke\(\)"):
            accord.leases.revoke(lease)  # the blocking client's old spelling still works
        assert accord.sessions.delete("plain", expected_created_revision=info.created_revision)
        assert accord.sessions.list() == []
