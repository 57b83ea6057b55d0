"""The wait-for graph a page at a time against the whole graph, on random queues; and
page tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.coordinator.locks.graph import to_wait_edge, wait_edges
from accord.coordinator.locks.queue import Entry
from accord.coordinator.locks.wait_pages import MAX_PAGE_BYTES, edge_page
from accord.coordinator.substrate.errors import InvalidArgument
from accord.coordinator.substrate.pages import parse_snapshot_token as parse_token
from accord.coordinator.substrate.pages import snapshot_token as make_token
from tests.unit.test_wait_graph_model import (
    build_with_semaphore,
    knot_queues_strategy,
)


def whole(queues: dict[str, list[Entry]]) -> list[tuple[int, int, str, bool]]:
    """Every edge, in the pages' order (locks by name), as comparable tuples."""
    edges = [
        to_wait_edge(e)
        for name in sorted(queues)
        for e in wait_edges({name: queues[name]}, with_semaphores=True)
    ]
    return [(e.waiter_lease, e.holder_lease, e.lock, e.holder_holding) for e in edges]


@settings(max_examples=300, deadline=None)
@given(knot_queues_strategy, st.integers(1, 7))
def test_pages_add_up_to_the_whole_graph(raw: dict[str, list[tuple[int, int]]], limit: int) -> None:
    queues = build_with_semaphore(raw)
    expected = whole(queues)
    found: list[tuple[int, int, str, bool]] = []
    offset, pages = 0, 0
    while True:
        page = edge_page(queues, offset, limit)
        assert page.total == len(expected)
        assert len(page.edges) <= limit
        found += [(e.waiter_lease, e.holder_lease, e.lock, e.holder_holding) for e in page.edges]
        pages += 1
        if not page.next_offset:
            break
        offset = page.next_offset
    assert found == expected
    assert pages == max(1, -(-len(expected) // limit))


def test_a_page_stops_before_its_byte_cap() -> None:
    # One exclusive queue of 120 waiters with long agent ids: 7,260 edges of ~200 bytes.
    raw = {"A": [(lease, 1) for lease in range(1, 122)]}
    queues = build_with_semaphore(raw)
    for entry in queues["A"]:
        entry.record.agent_id = "x" * 128
    page = edge_page(queues, 0, 10_000)
    assert 0 < len(page.edges) < page.total == 121 * 120 // 2
    assert sum(e.ByteSize() for e in page.edges) <= MAX_PAGE_BYTES
    assert page.next_offset == len(page.edges)


def test_page_tokens() -> None:
    assert parse_token("") == (0, 0)
    assert parse_token(make_token(1234, 56)) == (1234, 56)
    assert make_token(1234, 0) == ""  # the last page has no next
    for bad in ("x", "1.1", "2.0", "2", "2.-1", "2.1.1", f"{2**63}.1", f"2.{2**63}", " 2.1"):
        with pytest.raises(InvalidArgument):
            parse_token(bad)
