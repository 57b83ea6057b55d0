"""The structural length of Yjs v1 updates agrees with real updates of every kind."""

from __future__ import annotations

import random

import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from accord.coordinator.sessions.yjs_format import Malformed, update_length

VALUES = [
    1,
    2.5,
    -7,
    2**40,
    True,
    False,
    None,
    "s",
    "é😀",
    b"bin",
    [1, "x", None],
    {"a": {"b": [1.5]}},
]


def edits(seed: int, count: int) -> list[bytes]:
    """Incremental updates and full states of a document edited every way pycrdt can."""
    rng = random.Random(seed)
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    board = doc.get("m", type=Map)
    items = doc.get("a", type=Array)
    out: list[bytes] = []
    for i in range(count):
        before = doc.get_state()
        pick = rng.random()
        if pick < 0.3:
            text.insert(rng.randint(0, len(text)), rng.choice(["a", "é", "😀", "xyz"]))
        elif pick < 0.4 and len(text) > 4:
            del text[0:1]
        elif pick < 0.5:
            board[f"k{i % 7}"] = rng.choice(VALUES)
        elif pick < 0.6:
            board[f"n{i % 5}"] = Map({"x": Array([1, 2]), "t": Text("hi")})
        elif pick < 0.7:
            items.append(rng.choice(VALUES))
        elif pick < 0.75 and len(items):
            del items[0]
        elif pick < 0.85 and len(text) > 3:
            text.format(0, 2, {"bold": True})
        elif pick < 0.95:
            fragment = doc.get("x", type=XmlFragment)
            fragment.children.append(XmlElement("p", {"class": "c"}, [XmlText("hello")]))
        else:
            board["sub"] = Doc()
        out.append(doc.get_update(before))
    out.append(doc.get_update())
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_length_of_real_updates_is_their_size(seed: int) -> None:
    for update in edits(seed, 200):
        assert update_length(update) == len(update)


def test_trailing_bytes_are_outside_the_update() -> None:
    update = edits(4, 20)[-1]
    assert update_length(update + b"junk") == len(update)


def test_truncated_updates_are_malformed() -> None:
    update = edits(5, 50)[-1]
    ended_early = 0
    for n in range(len(update)):
        try:
            assert update_length(update[:n]) <= n
        except Malformed:
            ended_early += 1
    assert ended_early > len(update) // 2
