"""Server-side session operations: each kind, nested paths, all-or-none, and clear
INVALID_ARGUMENT errors that leave the session untouched."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text

from accord.client import AsyncClient, InvalidArgumentError, RootKind, UpdateEvent, ops
from accord.client.sessions import SessionState
from accord.v1.sessions_pb2 import MapSet, Operation


async def unchanged(client: AsyncClient, name: str, before: SessionState) -> None:
    """Nothing was applied since before: the same content and state vector (a read's
    revision is its replica's, and the client spreads reads over replicas)."""
    after = await client.sessions.read(name)
    assert after.snapshot == before.snapshot and after.json == before.json
    assert after.state_vector == before.state_vector


async def test_each_operation_kind(client: AsyncClient) -> None:
    await client.sessions.open("ops")
    apply = client.sessions.apply
    await apply("ops", ops.map_set("board", "title", "Plan"), ops.map_set("board", "n", 3))
    await apply("ops", ops.map_set("board", "gone", True), ops.map_delete("board", "gone"))
    await apply("ops", ops.text_insert("notes", 0, "héllo wörld"))
    await apply("ops", ops.text_insert("notes", 5, ","))  # code points, not bytes
    await apply("ops", ops.text_delete("notes", 6, 1))
    await apply("ops", ops.array_append("log", "a", "d"))
    await apply("ops", ops.array_insert("log", 1, "b", "c"))
    await apply("ops", ops.array_append("log", "x", "y"), ops.array_delete("log", 4, 2))
    state = await client.sessions.read("ops")
    assert state.json == {
        "board": {"title": "Plan", "n": 3},
        "notes": "héllo,wörld",
        "log": ["a", "b", "c", "d"],
    }


async def test_nested_paths(client: AsyncClient) -> None:
    await client.sessions.open("nested")
    task = {"owner": "planner", "steps": ["draft"], "meta": {"notes": []}}
    await client.sessions.apply("nested", ops.map_set("tasks", "t1", task))
    await client.sessions.apply(
        "nested",
        ops.map_set("tasks", "owner", "reviewer", path=["t1"]),
        ops.array_append("tasks", "review", path=["t1", "steps"]),
        ops.array_append("tasks", {"by": "a", "text": "ok"}, path=["t1", "meta", "notes"]),
        ops.map_set("tasks", "seen", True, path=["t1", "meta", "notes", 0]),
    )
    await client.sessions.apply("nested", ops.array_delete("tasks", 0, path=["t1", "steps"]))
    state = await client.sessions.read("nested")
    assert state.json == {
        "tasks": {
            "t1": {
                "owner": "reviewer",
                "steps": ["review"],
                "meta": {"notes": [{"by": "a", "text": "ok", "seen": True}]},
            }
        }
    }


async def test_apply_returns_and_broadcasts_an_ordinary_update(
    pinned: list[AsyncClient],
) -> None:
    a, b = pinned
    await a.sessions.open("broadcast")
    events = b.sessions.subscribe("broadcast")
    async for first in events:
        assert isinstance(first, UpdateEvent)
        break
    result = await a.sessions.apply("broadcast", ops.text_insert("notes", 0, "server-made"))
    assert result.revision > 0 and result.update
    async for event in events:
        assert isinstance(event, UpdateEvent)
        assert event.revision == result.revision and event.update == result.update
        break
    await events.aclose()
    local = Doc()
    local.apply_update(result.update)  # a Yjs client applies it like any other update
    assert str(local.get("notes", type=Text)) == "server-made"
    # Apply edits on top of what Yjs clients pushed, as one more participant.
    theirs = Doc()
    theirs.apply_update((await b.sessions.sync("broadcast")).update)
    text = theirs.get("notes", type=Text)
    text += " and client-made"
    await b.sessions.push("broadcast", theirs.get_update(local.get_state()))
    await a.sessions.apply("broadcast", ops.text_insert("notes", 0, ">> "))
    assert (await b.sessions.read("broadcast")).json == {"notes": ">> server-made and client-made"}


async def test_all_or_none(client: AsyncClient) -> None:
    await client.sessions.open("atomic")
    await client.sessions.apply("atomic", ops.map_set("board", "kept", 1))
    before = await client.sessions.read("atomic")
    with pytest.raises(InvalidArgumentError) as err:
        await client.sessions.apply(
            "atomic",
            ops.map_set("board", "new", 2),  # fine on its own
            ops.text_insert("notes", 0, "also fine"),
            ops.map_delete("board", "missing"),  # refused: so are the two before it
        )
    assert [f for f, _ in err.value.field_violations] == ["operations[2].map_delete.key"]
    await unchanged(client, "atomic", before)


@pytest.mark.parametrize(
    ("operation", "field"),
    [
        (ops.text_insert("board", 0, "x"), "operations[0].root"),  # a map, not text
        (ops.array_append("notes", 1), "operations[0].root"),  # declared text
        (ops.map_set("board", "k", 1, path=["missing"]), "operations[0].path[0]"),
        (ops.map_set("board", "k", 1, path=["list", 5]), "operations[0].path[1]"),
        (ops.map_set("board", "k", 1, path=[0]), "operations[0].path[0]"),  # index into map
        (ops.map_set("board", "k", 1, path=["title"]), "operations[0].path"),  # a plain value
        (ops.text_insert("board", 0, "x", path=["list"]), "operations[0].path"),
        (ops.map_set("nothing", "k", 1, path=["deep"]), "operations[0].root"),
        (ops.text_insert("notes", 99, "x"), "operations[0].text_insert.index"),
        (ops.text_delete("notes", 2, 10), "operations[0].text_delete"),
        (ops.array_insert("board", 0, 1, path=["list"]), None),  # fine: the control case
        (ops.array_insert("board", 9, 1, path=["list"]), "operations[0].array_insert.index"),
        (ops.array_delete("board", 1, 5, path=["list"]), "operations[0].array_delete"),
        (ops.map_delete("board", "absent"), "operations[0].map_delete.key"),
    ],
)
async def test_bad_operations_are_refused_and_change_nothing(
    client: AsyncClient, operation: ops.Operation, field: str | None
) -> None:
    await client.sessions.open("typed", roots={"notes": RootKind.TEXT})
    await client.sessions.apply(
        "typed",
        ops.map_set("board", "title", "t"),
        ops.map_set("board", "list", [1, 2]),
        ops.text_insert("notes", 0, "abc"),
    )
    before = await client.sessions.read("typed")
    if field is None:
        await client.sessions.apply("typed", operation)
        assert (await client.sessions.read("typed")).revision > before.revision
        return
    with pytest.raises(InvalidArgumentError) as err:
        await client.sessions.apply("typed", operation)
    assert err.value.reason == "INVALID_ARGUMENT"
    assert [f for f, _ in err.value.field_violations] == [field]
    await unchanged(client, "typed", before)


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "operation",
    [
        Operation(root="board"),  # no operation set
        Operation(map_set=MapSet(key="k", value_json="1")),  # no root
        Operation(root="board", map_set=MapSet(key="k", value_json="{nope")),
        Operation(root="board", map_set=MapSet(key="k", value_json="1e400")),  # infinite
        ops.map_set("board", "k", 2**60),  # not exact as a Yjs number
        ops.map_set("board", "k", nested(40)),  # nests too deep
    ],
)
async def test_malformed_operations(client: AsyncClient, operation: ops.Operation) -> None:
    await client.sessions.open("malformed")
    await client.sessions.apply("malformed", ops.map_set("board", "title", "t"))
    before = await client.sessions.read("malformed")
    with pytest.raises(InvalidArgumentError):
        await client.sessions.apply("malformed", operation)
    with pytest.raises(InvalidArgumentError):
        await client.sessions.apply("malformed")  # no operations at all
    await unchanged(client, "malformed", before)
