"""The wait-for graph a page at a time: pure functions, no I/O.

Edges come in a fixed order (locks by name, waiters in queue order, each waiter's
blockers in queue order), so a page is named by the snapshot's revision and the number
of edges before it. One exclusive queue of n waiters has n(n-1)/2 edges: a page counts
them per waiter without listing them (one pass over the queues), skips whole waiters
up to its offset, and lists only its own edges. A page holds at most `limit` edges and
stops before MAX_PAGE_BYTES, well under the 4 MiB a standard client accepts.

Error handling: a page token this module did not make is INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass

from accord.coordinator.locks.graph import Edge, to_wait_edge
from accord.coordinator.locks.queue import EXCLUSIVE, Entry, blockers
from accord.coordinator.substrate.errors import invalid
from accord.v1 import locks_pb2

DEFAULT_EDGES, MAX_EDGES = 1000, 10_000
MAX_PAGE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Page:
    edges: list[locks_pb2.WaitEdge]
    total: int  # edges in the whole graph
    next_offset: int  # 0: this was the last page




def page_limit(limit: int) -> int:
    if limit < 0:
        raise invalid("limit", f"must be between 0 and {MAX_EDGES} (0: {DEFAULT_EDGES})")
    return min(limit or DEFAULT_EDGES, MAX_EDGES)


def _waits(queue: list[Entry]) -> tuple[list[bool], list[int]]:
    """For each entry of a queue: whether it holds, and how many entries it waits for
    (its wait-for edges), in one pass."""
    holding: list[bool] = []
    counts: list[int] = []
    exclusive_ahead = 0
    for index, entry in enumerate(queue):
        if entry.record.permits:
            holds, waits_for = index < entry.record.permits, index
        elif entry.mode == EXCLUSIVE:
            holds, waits_for = index == 0, index
        else:
            holds, waits_for = exclusive_ahead == 0, exclusive_ahead
        holding.append(holds)
        counts.append(0 if holds else waits_for)
        exclusive_ahead += entry.mode == EXCLUSIVE and not entry.record.permits
    return holding, counts


def edge_page(queues: dict[str, list[Entry]], offset: int, limit: int) -> Page:
    """The edges from the offset-th on: at most limit of them and MAX_PAGE_BYTES."""
    edges: list[locks_pb2.WaitEdge] = []
    size, seen, total, full = 0, 0, 0, False
    for name in sorted(queues):
        queue = queues[name]
        holding, counts = _waits(queue)
        total += sum(counts)
        held = {e.token for e, holds in zip(queue, holding, strict=True) if holds}
        for index, waits_for in enumerate(counts):
            if full or seen + waits_for <= offset:
                seen += waits_for
                continue
            skip = max(0, offset - seen)
            for ahead in blockers(queue, index)[skip:]:
                edge = to_wait_edge(Edge(queue[index], ahead, ahead.token in held))
                size += edge.ByteSize() + 4
                if len(edges) == limit or (edges and size > MAX_PAGE_BYTES):
                    full = True
                    break
                edges.append(edge)
            seen += waits_for
    next_offset = offset + len(edges) if offset + len(edges) < total else 0
    return Page(edges, total, next_offset)
