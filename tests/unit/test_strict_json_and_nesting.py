"""The strict JSON parser (what JSON.parse accepts, finite numbers only, never a
RecursionError) and the nesting measure and clipped view of Yjs documents."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text

from accord.coordinator.sessions import nesting
from accord.coordinator.sessions.ops import scratch
from accord.coordinator.substrate import strict_json


@pytest.mark.parametrize(
    "text", ["NaN", '{"a": Infinity}', "[-Infinity]", "1e999", '{"a": [-1e400]}']
)
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="finite"):
        strict_json.loads(text)


def test_standard_json_is_read_as_json_loads_reads_it() -> None:
    text = '{"a": [1, 2.5, -0.0, 1e308, true, null, "NaN"], "b": {"c": 12345678901234567890}}'
    assert strict_json.loads(text) == {
        "a": [1, 2.5, -0.0, 1e308, True, None, "NaN"],
        "b": {"c": 12345678901234567890},
    }


def test_nesting_too_deep_for_the_parser_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        strict_json.loads("[" * 100_000 + "]" * 100_000)


def _deep(levels: int) -> bytes:
    doc: Doc[Any] = Doc()
    node = doc.get("board", type=Map)
    for i in range(levels):
        node["c"] = Map() if i % 2 else Array()  # type: ignore[assignment]
        child = node["c"]
        if isinstance(child, Array):
            child.append(Map())
            node = child[0]
        else:
            node = child
    doc.get("notes", type=Text).insert(0, "text is a leaf")
    return doc.get_update()


def test_depth_counts_maps_and_arrays_inside_each_other() -> None:
    update = _deep(10)  # each odd level adds an array and the map inside it
    assert nesting.depth(lambda: scratch(update)) == 1 + 10 + 5


def test_depth_stops_counting_past_its_limit() -> None:
    update = _deep(3000)
    assert nesting.depth(lambda: scratch(update), limit=64) == 65


def test_clipped_view_stops_at_the_limit_with_a_marker() -> None:
    doc = scratch(_deep(3000))
    view = nesting.clipped(doc.get("board", type=Map))
    level, value = 1, view
    while isinstance(value, dict | list):
        level, value = level + 1, value["c"] if isinstance(value, dict) else value[0]
    assert value == nesting.CLIPPED and level == nesting.MAX_NESTING + 1
