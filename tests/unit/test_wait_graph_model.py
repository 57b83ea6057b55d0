"""The wait-for graph and cycle finder against a brute-force model, on random queues."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from accord.coordinator.locks.graph import (
    choose_knot_victim,
    choose_victim,
    find_cycle,
    reached_from,
    stuck_leases,
    wait_edges,
)
from accord.coordinator.locks.queue import EXCLUSIVE, SHARED, Entry, blockers, is_granted
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


# Knots: lock "S" is a semaphore of 2 permits; the other locks as above.
SEMAPHORE_PERMITS = 2
knot_queues_strategy = st.dictionaries(
    st.sampled_from(["A", "B", "S"]),
    st.lists(queue_entry, max_size=5, unique_by=lambda e: e[0]),
    max_size=3,
)


def build_with_semaphore(raw: dict[str, list[tuple[int, int]]]) -> dict[str, list[Entry]]:
    queues = build(raw)
    for entry in queues.get("S", []):
        entry.record.mode = EXCLUSIVE
        entry.record.permits = SEMAPHORE_PERMITS
    return queues


def model_finishers(queues: dict[str, list[Entry]]) -> set[int]:
    """The largest set of leases that can all finish in some order, by searching the
    orders (each lease, on its turn, must hold every entry it has once the leases before
    it are gone): a search over subsets, unlike the detector's greedy reduction."""
    leases = {e.lease_id for q in queues.values() for e in q}

    def holds_all(lease: int, gone: frozenset[int]) -> bool:
        for queue in queues.values():
            left = [e for e in queue if e.lease_id not in gone]
            for i, entry in enumerate(left):
                if entry.lease_id != lease:
                    continue
                if entry.record.permits:
                    if i >= entry.record.permits:
                        return False
                elif entry.mode == SHARED:
                    if any(e.mode == EXCLUSIVE for e in left[:i]):
                        return False
                elif i:
                    return False
        return True

    best: frozenset[int] = frozenset()
    seen: set[frozenset[int]] = set()
    frontier = [frozenset[int]()]
    while frontier:
        gone = frontier.pop()
        best = max(best, gone, key=len)
        for lease in leases - gone:
            if holds_all(lease, gone) and (after := gone | {lease}) not in seen:
                seen.add(after)
                frontier.append(after)
    return set(best)


@settings(max_examples=400, deadline=None)
@given(knot_queues_strategy)
def test_stuck_leases_are_exactly_those_no_order_lets_finish(
    raw: dict[str, list[tuple[int, int]]],
) -> None:
    queues = build_with_semaphore(raw)
    leases = {e.lease_id for q in queues.values() for e in q}
    stuck = stuck_leases(queues)
    assert stuck == leases - model_finishers(queues)
    if not any(e.record.permits for q in queues.values() for e in q):
        # Without semaphores: stuck means on a cycle or waiting, transitively, for one.
        waits = model_waits(queues)
        on_cycle = {lease for lease in waits if lease in model_reach(waits, lease)}
        expected = {lease for lease in leases if (model_reach(waits, lease) | {lease}) & on_cycle}
        assert stuck == expected


@settings(max_examples=300, deadline=None)
@given(knot_queues_strategy)
def test_knot_victim_is_a_stuck_wait_whose_end_frees_all_when_one_can(
    raw: dict[str, list[tuple[int, int]]],
) -> None:
    queues = build_with_semaphore(raw)
    stuck = stuck_leases(queues)
    if not stuck:
        return
    victim = choose_knot_victim(queues, stuck)
    queue = queues[victim.lock]
    assert victim.lease_id in stuck
    assert not is_granted(queue, queue.index(victim))

    def without(entry: Entry) -> dict[str, list[Entry]]:
        return {n: [e for e in q if e.key != entry.key] for n, q in queues.items()}

    waiting = [
        e
        for q in queues.values()
        for i, e in enumerate(q)
        if e.lease_id in stuck and not is_granted(q, i)
    ]
    if any(not stuck_leases(without(e)) & stuck for e in waiting):
        assert not stuck_leases(without(victim)) & stuck


def test_a_semaphore_with_a_free_permit_holder_is_no_deadlock() -> None:
    """S (2 permits) held by leases 1 and 2; lease 3 holds A and waits for S; lease 1
    waits for A. A cycle 1 -> 3 -> 1 exists if a semaphore wait needed every holder, but
    lease 2 waits for nothing and will free a permit: no knot. Once lease 2 also waits
    for A, it is one."""
    queues = build_with_semaphore({"A": [(3, EXCLUSIVE), (1, EXCLUSIVE)], "S": [(1, 0), (2, 0)]})
    queues["S"].append(
        Entry("S", 3, b"S/3", 99, records_pb2.LockEntryRecord(mode=EXCLUSIVE, permits=2))
    )
    assert stuck_leases(queues) == set()
    queues["A"].append(Entry("A", 2, b"A/2", 100, records_pb2.LockEntryRecord(mode=EXCLUSIVE)))
    assert stuck_leases(queues) == {1, 2, 3}
    assert choose_knot_victim(queues, {1, 2, 3}).key == b"A/2"  # the youngest wait
