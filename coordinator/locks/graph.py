"""The wait-for graph over lock queues, and the choice of whom to stop: pure functions.

Nodes are leases. There is an edge from a waiting lease to every lease queued ahead of it
that it must wait for (mode-aware: a shared waiter waits only for exclusive entries ahead;
an exclusive one for all). A semaphore wait needs only some of the entries ahead to
leave, so cycles through one are judged by reduction (stuck_leases), not by edges.
deadlocks.py explains the policy; this module computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from accord.coordinator.locks.queue import SHARED, Entry, blockers, is_granted
from accord.v1 import locks_pb2


@dataclass(frozen=True, slots=True)
class Edge:
    waiter: Entry
    holder: Entry
    # Whether the holder holds now (by its queue position), or is itself still waiting.
    holder_holding: bool

    @property
    def waiter_node(self) -> int:
        return self.waiter.lease_id

    @property
    def holder_node(self) -> int:
        return self.holder.lease_id


def node(entry: Entry) -> str:
    """A lease, named for people by its agent."""
    return f"{entry.record.agent_id or 'agent'}#{entry.lease_id:x}"


def wait_edges(
    queues: dict[str, list[Entry]],
    *,
    with_semaphores: bool = False,
    waiters: set[int] | None = None,
) -> list[Edge]:
    """Every wait-for edge; with waiters, only those of waits by these leases."""
    edges: list[Edge] = []
    for queue in queues.values():
        holding = {e.token for i, e in enumerate(queue) if is_granted(queue, i)}
        for index, entry in enumerate(queue):
            if entry.record.permits and not with_semaphores:
                continue
            if waiters is not None and entry.lease_id not in waiters:
                continue
            edges.extend(
                Edge(entry, ahead, ahead.token in holding) for ahead in blockers(queue, index)
            )
    return edges


def reached_from(
    queues: dict[str, list[Entry]], start: int, *, with_semaphores: bool = False
) -> set[int] | None:
    """The leases that lease start waits for, directly or not, if one of them waits for
    start again; None when start is on no cycle. A semaphore wait counts as waiting for
    every entry ahead only with_semaphores (and is left out otherwise)."""
    waits: dict[int, list[tuple[list[Entry], int]]] = {}
    for queue in queues.values():
        for index, entry in enumerate(queue):
            if with_semaphores or not entry.record.permits:
                waits.setdefault(entry.lease_id, []).append((queue, index))
    seen, frontier, cyclic = {start}, [start], False
    while frontier:
        for queue, index in waits.get(frontier.pop(), ()):
            for ahead in blockers(queue, index):
                cyclic = cyclic or ahead.lease_id == start
                if ahead.lease_id not in seen:
                    seen.add(ahead.lease_id)
                    frontier.append(ahead.lease_id)
    return seen if cyclic else None


def find_cycle(edges: Sequence[Edge]) -> list[Edge] | None:
    """One cycle over leases, as edges in order, or None; deterministic."""
    out: dict[int, list[Edge]] = {}
    for edge in sorted(edges, key=lambda e: (e.waiter_node, e.holder_node, e.waiter.token)):
        out.setdefault(edge.waiter_node, []).append(edge)
    state: dict[int, int] = {}  # 1: on the current path, 2: finished
    path: list[Edge] = []

    def visit(current: int) -> list[Edge] | None:
        state[current] = 1
        for edge in out.get(current, []):
            target = edge.holder_node
            if state.get(target) == 1:  # back to the path: the cycle starts at target
                path.append(edge)
                start = next(i for i, e in enumerate(path) if e.waiter_node == target)
                return path[start:]
            if target not in state:
                path.append(edge)
                found = visit(target)
                if found:
                    return found
                path.pop()
        state[current] = 2
        return None

    for start in sorted(out):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def _policy_key(entry: Entry) -> tuple[int, int, int]:
    """Lowest priority first, then the youngest wait, then the highest lease id."""
    return (entry.record.priority, -entry.token, -entry.lease_id)


def choose_victim(edges: Sequence[Edge], cycle: Sequence[Edge]) -> Entry:
    """The wait to end for the strongly connected tangle that contains cycle: the first
    waiting entry, in policy order, whose removal alone leaves the tangle without a cycle,
    so no bystander dies for a cycle it does not hold together. (If no single wait does,
    the policy's first, and the caller looks again.)"""
    start = cycle[0].waiter_node
    forward, backward = _reach(edges, start, forward=True), _reach(edges, start, forward=False)
    tangle = forward & backward
    inside = [e for e in edges if e.waiter_node in tangle and e.holder_node in tangle]
    candidates = sorted({e.waiter.key: e.waiter for e in inside}.values(), key=_policy_key)
    for candidate in candidates:
        if find_cycle([e for e in inside if e.waiter.key != candidate.key]) is None:
            return candidate
    return candidates[0]


def cycle_through(edges: Sequence[Edge], victim: Entry) -> list[Edge] | None:
    """A cycle that uses one of victim's waits, for the explanation."""
    for first in (e for e in edges if e.waiter.key == victim.key):
        parents: dict[int, Edge] = {}
        frontier, seen = [first.holder_node], {first.holder_node}
        while frontier:
            node_id = frontier.pop()
            if node_id == victim.lease_id:
                path, at = [], node_id
                while at != first.holder_node:
                    edge = parents[at]
                    path.append(edge)
                    at = edge.waiter_node
                return [first, *reversed(path)]
            for edge in edges:
                if edge.waiter_node == node_id and edge.holder_node not in seen:
                    seen.add(edge.holder_node)
                    parents[edge.holder_node] = edge
                    frontier.append(edge.holder_node)
    return None


def _reach(edges: Sequence[Edge], start: int, *, forward: bool) -> set[int]:
    out: dict[int, set[int]] = {}
    for edge in edges:
        a, b = (
            (edge.waiter_node, edge.holder_node)
            if forward
            else (edge.holder_node, edge.waiter_node)
        )
        out.setdefault(a, set()).add(b)
    seen, frontier = {start}, [start]
    while frontier:
        for nxt in out.get(frontier.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def stuck_leases(queues: dict[str, list[Entry]]) -> set[int]:
    """The leases that can never finish: what is left after letting each lease that waits
    for nothing finish and give back everything it holds, until none can (deadlock
    detection by graph reduction, exact for lock and semaphore waits alike)."""
    live = {name: list(queue) for name, queue in queues.items()}
    locks_of: dict[int, list[str]] = {}
    for name, queue in live.items():
        for entry in queue:
            locks_of.setdefault(entry.lease_id, []).append(name)

    def waits(lease: int) -> bool:
        for name in locks_of[lease]:
            queue = live[name]
            index = next(i for i, e in enumerate(queue) if e.lease_id == lease)
            if not is_granted(queue, index):
                return True
        return False

    pending = set(locks_of)
    while finished := {lease for lease in pending if not waits(lease)}:
        pending -= finished
        for name in {n for lease in finished for n in locks_of[lease]}:
            live[name] = [e for e in live[name] if e.lease_id not in finished]
    return pending


def choose_knot_victim(queues: dict[str, list[Entry]], stuck: set[int]) -> Entry:
    """The waiting entry of a stuck lease to end: the first in policy order whose end
    alone lets every stuck lease finish (else the policy's first; the caller looks
    again)."""
    candidates = sorted(
        (
            entry
            for queue in queues.values()
            for index, entry in enumerate(queue)
            if entry.lease_id in stuck and not is_granted(queue, index)
        ),
        key=_policy_key,
    )
    for candidate in candidates:
        rest = {n: [e for e in q if e.key != candidate.key] for n, q in queues.items()}
        if not stuck_leases(rest) & stuck:
            return candidate
    return candidates[0]


def to_wait_edge(edge: Edge) -> locks_pb2.WaitEdge:
    return locks_pb2.WaitEdge(
        waiter_agent=edge.waiter.record.agent_id,
        waiter_lease=edge.waiter.lease_id,
        waiter_mode=edge.waiter.mode,
        lock=edge.waiter.lock,
        holder_agent=edge.holder.record.agent_id,
        holder_lease=edge.holder.lease_id,
        holder_mode=edge.holder.mode,
        holder_holding=edge.holder_holding,
        waiting_since=edge.waiter.record.since,
        waiter_priority=edge.waiter.record.priority,
    )


def policy_text(cycle: Sequence[Edge], victim: Entry) -> str:
    if any(e.waiter.record.permits for e in cycle):
        stuck = sorted({node(e.waiter) for e in cycle})
        return (
            f"knot of {len(stuck)} leases through a semaphore ({', '.join(stuck)}): each waits "
            "for permits or locks only the others hold, so none can finish. Ended the wait "
            f"of {node(victim)} for {victim.lock!r}: of the waits whose end lets them all "
            f"finish, the lowest priority ({victim.record.priority}), then the youngest wait "
            f"(token {victim.token}); the others proceed"
        )
    steps = " -> ".join(
        f"{node(e.waiter)} waits for {node(e.holder)} on {e.waiter.lock!r}"
        f"{' (shared)' if e.waiter.mode == SHARED else ''}"
        for e in cycle
    )
    return (
        f"cycle of {len(cycle)}: {steps}. Ended the wait of {node(victim)} for "
        f"{victim.lock!r}: of the waits whose end breaks the cycle, the lowest priority "
        f"({victim.record.priority}), then the youngest wait (token {victim.token}); the others "
        "proceed"
    )
