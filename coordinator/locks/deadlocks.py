"""Deadlock detection over a wait-for graph built from etcd state.

Nodes are leases: a lease is one agent's liveness, the actor that holds some locks while
it waits for another (agent ids label the nodes; one agent running concurrent tasks under
several leases is several actors, so its tasks waiting on each other is no deadlock).
There is an edge from a waiting lease to every lease queued ahead of it that it must
wait for (mode-aware: a shared waiter waits only for exclusive entries ahead; an
exclusive one for all). Queues are FIFO, so every edge exists from the moment
its waiter enqueues: a cycle can only close when a wait starts, and then it runs through
the lease that started it. So the replica that starts a wait checks, reading every queue
of the namespace at one etcd revision and searching only what that lease reaches: with
no path back to it there is no new cycle, and only the leases it reaches can be in one.
Two waits closing a cycle at once on two replicas are found by whichever reads second
(the cycle runs through its lease, and it reads after both waits began).

For each cycle exactly one wait is ended: among the waits of the cycle's strongly
connected tangle, the first in policy order (lowest priority, then the youngest wait,
then the highest lease id) whose removal alone breaks the tangle, so every replica picks
the same one and no bystander dies for a cycle it does not hold together. The verdict is
one etcd transaction that deletes the victim's queue entry and records the cycle,
guarded by every entry of the cycle still being there: a cycle already broken, by
another replica or a release, is left alone. The victim's Acquire, wherever it waits,
sees its entry go and reads the verdict.

A semaphore wait is not an edge to each entry ahead: it needs only some of them to leave,
so a cycle through it may be no deadlock (another permit holder will finish). When the
leases the new wait reaches hold semaphore entries, the detector instead reduces that part
of the graph: every lease that waits for nothing is assumed to finish and give back all
it holds, again and again; the leases left can never finish (a knot). One wait among them
is ended: the first in policy order whose end alone lets all of them finish. The verdict
records the waits among the stuck leases.

Layout: {root}/ns/{namespace}/deadlocks/{lock}\\0{lease hex}\\0{token hex} -> Deadlock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from aetcd.rpc import rpc_pb2 as rpc
from google.protobuf import timestamp_pb2

from accord.coordinator import logs
from accord.coordinator.locks.store import SHARED, Entry, LockStore, blockers, is_granted
from accord.coordinator.substrate.errors import LeaseNotFound
from accord.coordinator.substrate.etcd import Etcd, prefix_end
from accord.coordinator.substrate.retention import RetentionLeases
from accord.v1 import locks_pb2

_log = logs.get("accord.deadlocks")
MAX_RECENT = 100


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


class DeadlockDetector:
    def __init__(
        self, etcd: Etcd, locks: LockStore, retention: RetentionLeases, *, root: str
    ) -> None:
        self._etcd = etcd
        self._locks = locks
        self._retention = retention
        self._root = root
        self.resolved = 0

    def _prefix(self, namespace: str) -> bytes:
        return f"{self._root}/ns/{namespace}/deadlocks/".encode()

    def _verdict_key(self, namespace: str, entry: Entry) -> bytes:
        tail = entry.key[len(self._locks.locks_prefix(namespace)) :]
        return self._prefix(namespace) + tail + f"\x00{entry.token:016x}".encode()

    async def graph(self, namespace: str) -> tuple[int, list[locks_pb2.WaitEdge]]:
        revision, queues = await self._locks.all_entries(namespace)
        return revision, [to_wait_edge(e) for e in wait_edges(queues, with_semaphores=True)]

    async def check(self, namespace: str, lease_id: int | None = None) -> int:
        """Find every cycle among the namespace's waits (with lease_id: every cycle among
        what that lease, which just began to wait, reaches) and end one wait in each;
        returns how many waits were ended."""
        revision, queues = await self._locks.all_entries(namespace)
        if lease_id is None:
            edges = wait_edges(queues)
        else:
            reached = reached_from(queues, lease_id, with_semaphores=True)
            if reached is None:
                return 0
            # Entries behind those of the reached leases cannot hold them up.
            region = {
                name: kept
                for name, queue in queues.items()
                if (kept := [e for e in queue if e.lease_id in reached])
            }
            if any(e.record.permits for queue in region.values() for e in queue):
                return await self._end_knots(namespace, region, revision)
            edges = wait_edges(queues, waiters=reached)
        ended = 0
        while (cycle := find_cycle(edges)) is not None:
            victim = choose_victim(edges, cycle)
            explained = cycle_through(edges, victim) or cycle
            ended += await self._resolve(namespace, explained, victim, revision)
            edges = [e for e in edges if e.waiter.key != victim.key]
        return ended

    async def _end_knots(
        self, namespace: str, region: dict[str, list[Entry]], revision: int
    ) -> int:
        ended = 0
        while stuck := stuck_leases(region):
            victim = choose_knot_victim(region, stuck)
            waits = [
                e
                for e in wait_edges(region, with_semaphores=True, waiters=stuck)
                if e.holder.lease_id in stuck
            ]
            if not await self._resolve(namespace, waits, victim, revision):
                break  # something changed meanwhile: the next wait to start looks again
            ended += 1
            region = {n: [e for e in q if e.key != victim.key] for n, q in region.items()}
        return ended

    async def _resolve(
        self, namespace: str, cycle: list[Edge], victim: Entry, revision: int
    ) -> int:
        members = {e.waiter.key: e.waiter for e in cycle} | {e.holder.key: e.holder for e in cycle}
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(time.time_ns())
        record = locks_pb2.Deadlock(
            id=f"{revision}-{victim.token}",
            cycle=[to_wait_edge(e) for e in cycle],
            victim_agent=victim.record.agent_id,
            victim_lease=victim.lease_id,
            victim_lock=victim.lock,
            detected_at=now,
            policy=_policy(cycle, victim),
        )
        for attempt in range(2):
            lease = await self._retention.current()
            try:
                response = await self._etcd.txn(
                    rpc.TxnRequest(
                        compare=[
                            rpc.Compare(
                                key=m.key,
                                target=rpc.Compare.CREATE,
                                result=rpc.Compare.EQUAL,
                                create_revision=m.token,
                            )
                            for m in members.values()
                        ],
                        success=[
                            rpc.RequestOp(
                                request_delete_range=rpc.DeleteRangeRequest(key=victim.key)
                            ),
                            rpc.RequestOp(
                                request_put=rpc.PutRequest(
                                    key=self._verdict_key(namespace, victim),
                                    value=record.SerializeToString(),
                                    lease=lease,
                                )
                            ),
                        ],
                    ),
                    retry=True,
                )
                break
            except LeaseNotFound:  # the retention lease is gone: take a fresh one, once
                self._retention.forget(lease)
                if attempt:
                    raise
        if not response.succeeded:
            return 0  # already broken, here or by another replica
        self.resolved += 1
        _log.warning(
            "deadlock resolved",
            namespace=namespace,
            victim=node(victim),
            lock=victim.lock,
            cycle=[f"{node(e.waiter)}->{node(e.holder)} on {e.waiter.lock}" for e in cycle],
            total_resolved=self.resolved,
        )
        return 1

    async def verdict(self, namespace: str, entry: Entry) -> locks_pb2.Deadlock | None:
        response = await self._etcd.range(rpc.RangeRequest(key=self._verdict_key(namespace, entry)))
        if not response.kvs:
            return None
        return locks_pb2.Deadlock.FromString(response.kvs[0].value)

    async def recent(self, namespace: str, limit: int) -> tuple[int, list[locks_pb2.Deadlock]]:
        prefix = self._prefix(namespace)
        response = await self._etcd.range(
            rpc.RangeRequest(
                key=prefix,
                range_end=prefix_end(prefix),
                limit=min(limit or 20, MAX_RECENT),
                sort_order=rpc.RangeRequest.DESCEND,
                sort_target=rpc.RangeRequest.CREATE,
            )
        )
        return response.header.revision, [
            locks_pb2.Deadlock.FromString(kv.value) for kv in response.kvs
        ]


def _policy(cycle: Sequence[Edge], victim: Entry) -> str:
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
