"""The wait-for graph and cycle finder against a brute-force model, on random queues."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from accord.coordinator.deadlocks import choose_victim, find_cycle, reached_from, wait_edges
from accord.coordinator.locks import EXCLUSIVE, SHARED, Entry, blockers, is_granted
from accord.v1 import records_pb2

# A queue entry: (lease, mode). Leases 1..6 over locks A..D; a lease queues once per lock.
queue_entry = st.tuples(st.integers(1, 6), st.sampled_from([EXCLUSIVE, SHARED]))
queues_strategy = st.dictionaries(
    st.sampled_from(["A", "B", "C", "D"]),
    st.lists(queue_entry, max_size=5, unique_by=lambda e: e[0]),
    max_size=4,
)


def build(raw: dict[str, list[tuple[int, int]]]) -> dict[str, list[Entry]]:
    token = 0
    queues: dict[str, list[Entry]] = {}
    for name, entries in sorted(raw.items()):
        for lease, mode in entries:
            token += 1
            record = records_pb2.LockEntryRecord(agent_id=f"agent-{lease}", mode=mode)
            queues.setdefault(name, []).append(
                Entry(name, lease, f"{name}/{lease}".encode(), token, record)
            )
    return queues


def model_waits(queues: dict[str, list[Entry]]) -> dict[int, set[int]]:
    """Which leases each lease waits for, by the definitions, not the code."""
    waits: dict[int, set[int]] = {}
    for queue in queues.values():
        for i, entry in enumerate(queue):
            granted = all(e.mode == SHARED for e in queue[:i]) if entry.mode == SHARED else i == 0
            if granted:
                continue
            ahead = [e for e in queue[:i] if EXCLUSIVE in (entry.mode, e.mode)]
            waits.setdefault(entry.lease_id, set()).update(e.lease_id for e in ahead)
    return waits


def model_reach(waits: dict[int, set[int]], start: int) -> set[int]:
    """Leases reachable from start in one step or more, by brute force."""
    seen: set[int] = set()
    frontier = set(waits.get(start, set()))
    while frontier:
        seen |= frontier
        frontier = {n for f in frontier for n in waits.get(f, set())} - seen
    return seen


def model_has_cycle(queues: dict[str, list[Entry]]) -> bool:
    """Reachability by brute force: a lease that can reach itself is in a cycle."""
    waits = model_waits(queues)
    return any(start in model_reach(waits, start) for start in waits)


@settings(max_examples=400, deadline=None)
@given(queues_strategy)
def test_cycle_found_exactly_when_the_model_has_one(raw: dict[str, list[tuple[int, int]]]) -> None:
    queues = build(raw)
    edges = wait_edges(queues)
    cycle = find_cycle(edges)
    assert (cycle is not None) == model_has_cycle(queues)
    if cycle is not None:
        # A real cycle: each edge's holder is the next edge's waiter, and it closes.
        for edge, following in zip(cycle, cycle[1:] + cycle[:1], strict=True):
            assert edge.holder.lease_id == following.waiter.lease_id
        victim = choose_victim(edges, cycle)
        queue = queues[victim.lock]
        assert not is_granted(queue, [e.token for e in queue].index(victim.token))


@settings(max_examples=200, deadline=None)
@given(queues_strategy)
def test_breaking_each_cycle_leaves_no_cycle(raw: dict[str, list[tuple[int, int]]]) -> None:
    """Removing one victim's wait per cycle (as the detector does) ends every cycle, and
    never removes a holder."""
    queues = build(raw)
    edges = wait_edges(queues)
    victims: list[Entry] = []
    while (cycle := find_cycle(edges)) is not None:
        victim = choose_victim(edges, cycle)
        queue = queues[victim.lock]
        assert blockers(queue, [e.token for e in queue].index(victim.token)), "victims wait"
        assert victim.key not in {v.key for v in victims}, "a victim is chosen once"
        victims.append(victim)
        edges = [e for e in edges if e.waiter.key != victim.key]
    # Whenever ending one wait would break every cycle, exactly one wait is ended.
    everything = wait_edges(queues)
    waiting = {e.waiter.key for e in everything}
    if (
        any(find_cycle([e for e in everything if e.waiter.key != key]) is None for key in waiting)
        and find_cycle(everything) is not None
    ):
        assert len(victims) == 1


def test_a_bystander_is_not_a_second_victim() -> None:
    """Leases A=3, B=2, M=1. K: [A, B]; L: [B, M (priority 0), A]. A and B deadlock over
    K and L; M merely waits behind B. Ending M's wait would not break A<->B."""
    queues = build(
        {
            "K": [(3, EXCLUSIVE), (2, EXCLUSIVE)],
            "L": [(2, EXCLUSIVE), (1, EXCLUSIVE), (3, EXCLUSIVE)],
        }
    )
    for entry in queues["K"] + queues["L"]:
        entry.record.priority = 0 if entry.lease_id == 1 else 5
    edges = wait_edges(queues)
    victims = []
    while (cycle := find_cycle(edges)) is not None:
        victim = choose_victim(edges, cycle)
        victims.append((victim.lock, victim.lease_id))
        edges = [e for e in edges if e.waiter.key != victim.key]
    assert len(victims) == 1 and victims[0][1] != 1


@settings(max_examples=400, deadline=None)
@given(queues_strategy, st.integers(1, 6))
def test_search_from_a_lease_finds_exactly_its_cycles(
    raw: dict[str, list[tuple[int, int]]], lease: int
) -> None:
    """The detector searches only from the lease that began to wait: it must see a cycle
    exactly when that lease is on one, and then end the same wait as a full search of
    that lease's tangle would."""
    queues = build(raw)
    waits = model_waits(queues)
    reach = model_reach(waits, lease)
    reached = reached_from(queues, lease)
    assert (reached is not None) == (lease in reach)
    if reached is None:
        return
    assert reached == reach | {lease}
    edges = wait_edges(queues, waiters=reached)
    cycle = find_cycle(edges)
    assert cycle is not None
    assert choose_victim(edges, cycle).key == choose_victim(wait_edges(queues), cycle).key
