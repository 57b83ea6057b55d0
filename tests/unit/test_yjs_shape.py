"""update_shape counts what check_update relies on: the nested types an update creates
(fewer than MAX_NESTING cannot nest too deep, so no walk) and its structs."""

from __future__ import annotations

from typing import Any

from pycrdt import Array, Doc, Map, Text

from accord.coordinator.sessions.yjs_format import update_shape


def test_nested_types_and_structs_are_counted() -> None:
    doc: Doc[Any] = Doc()
    board = doc.get("board", type=Map)
    board["a"] = Map()
    board["a"]["b"] = Array([1, 2])
    board["t"] = Text("x")
    flat = doc.get("flat", type=Array)
    for i in range(5):
        flat.insert(0, i)  # five separate structs
    update = doc.get_update()
    length, nested, structs = update_shape(update)
    assert length == len(update)
    assert nested == 3  # the map, the array in it, the text: roots are not nested
    assert structs >= 5 + 3


def test_an_update_without_nested_types_counts_none() -> None:
    doc: Doc[Any] = Doc()
    doc.get("log", type=Array).extend(list(range(100)))
    assert update_shape(doc.get_update())[1] == 0
