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
(the cycle runs through its lease, and it reads after both waits began). The wait that
closes a cycle is the last of its waits to begin, and the cycle's edge into its lease
comes from an entry behind another of that lease's entries (one behind the new wait
would have begun later): so a lease with no other entry than the wait it begins closes
no cycle, and is checked with one read of the keys attached to it, not of the
namespace's queues. That keeps a long queue of single-lock waiters linear.

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

Layout: keyspace.deadlock, a Deadlock on the retention lease. The graph and the policy
are computed in graph.py. Listing goes newest first by create revision; a page token is
the create revision of the page's last record, and the next page is read below it.
"""

from __future__ import annotations

import re
import time

from google.protobuf import timestamp_pb2

from accord.coordinator import logs
from accord.coordinator.locks.graph import (
    Edge,
    choose_knot_victim,
    choose_victim,
    cycle_through,
    find_cycle,
    node,
    policy_text,
    reached_from,
    stuck_leases,
    to_wait_edge,
    wait_edges,
)
from accord.coordinator.locks.queue import Entry
from accord.coordinator.locks.store import LockStore
from accord.coordinator.locks.wait_pages import Page, edge_page, page_limit
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import Substrate
from accord.coordinator.substrate.errors import FieldViolation, require
from accord.coordinator.substrate.pages import parse_snapshot_token
from accord.coordinator.substrate.txn import Txn, created_at, delete, put, read, txn
from accord.v1 import locks_pb2

_log = logs.get("accord.deadlocks")
DEFAULT_RECENT, MAX_RECENT = 20, 100


class DeadlockDetector:
    def __init__(self, substrate: Substrate, locks: LockStore) -> None:
        self._s = substrate
        self._locks = locks
        self.resolved = 0

    def _verdict_key(self, namespace: str, entry: Entry) -> bytes:
        return self._s.keys.deadlock(namespace, entry.key, entry.token)

    async def graph(self, namespace: str, limit: int, page_token: str) -> tuple[int, Page]:
        """A page of the wait-for graph, every page read at the first one's revision."""
        at, offset = parse_snapshot_token(page_token)
        edges = page_limit(limit)
        revision, queues = await self._locks.all_entries(namespace, revision=at)
        return revision, edge_page(queues, offset, edges)

    async def check(self, namespace: str, lease_id: int | None = None) -> int:
        """Find every cycle among the namespace's waits (with lease_id: every cycle among
        what that lease, which just began to wait, reaches) and end one wait in each;
        returns how many waits were ended."""
        if lease_id is not None and not await self._in_other_queues(namespace, lease_id):
            return 0
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
            ended += await self._resolve(
                namespace, explained, victim, revision, accord_metrics.CYCLE
            )
            edges = [e for e in edges if e.waiter.key != victim.key]
        return ended

    async def _in_other_queues(self, namespace: str, lease_id: int) -> bool:
        """Whether the lease has more than the one queue entry whose wait just began: the
        keys attached to it, read from etcd (as many as the lease's own keys)."""
        attached = (await self._s.etcd.lease_time_to_live(lease_id)).keys
        entries = (self._s.keys.parse_lock_entry(namespace, key) for key in attached)
        return sum(1 for parsed in entries if parsed is not None) > 1

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
            if not await self._resolve(namespace, waits, victim, revision, accord_metrics.KNOT):
                break  # something changed meanwhile: the next wait to start looks again
            ended += 1
            region = {n: [e for e in q if e.key != victim.key] for n, q in region.items()}
        return ended

    async def _resolve(
        self, namespace: str, cycle: list[Edge], victim: Entry, revision: int, policy: str
    ) -> int:
        """End victim's wait (policy: how it was chosen, accord_metrics.CYCLE or KNOT); 1
        when this call ended it, 0 when the cycle was already broken."""
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
            policy=policy_text(cycle, victim),
        )
        verdict = self._verdict_key(namespace, victim)

        def build(retention_lease: int) -> Txn:
            return txn(
                when=[created_at(m.key, m.token) for m in members.values()],  # still a cycle
                then=[
                    delete(victim.key),
                    put(verdict, record.SerializeToString(), lease=retention_lease),
                ],
            )

        # Straight to etcd: its compares must see every write before it.
        committed = await self._s.writes.commit(build, retained=True, batched=False, retry=True)
        if not committed.response.succeeded:
            return 0  # already broken, here or by another replica
        self.resolved += 1
        accord_metrics.deadlock_resolved(namespace, policy)
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
        response = await self._s.etcd.range(read(self._verdict_key(namespace, entry)))
        if not response.kvs:
            return None
        return locks_pb2.Deadlock.FromString(response.kvs[0].value)

    async def recent(
        self, namespace: str, limit: int, page_token: str = ""
    ) -> tuple[int, list[locks_pb2.Deadlock], str]:
        """Resolved deadlocks, newest first: at most limit of them, older than the last one
        of the page page_token ended; and the token of the next page ("": none)."""
        violations: list[FieldViolation] = []
        if limit < 0:
            violations.append(FieldViolation("limit", f"must be between 0 and {MAX_RECENT}"))
        before = _revision_of(page_token) if page_token else None
        if page_token and before is None:
            violations.append(FieldViolation("page_token", "is not a token this service issued"))
        require(violations)
        request = read(self._s.keys.deadlocks_prefix(namespace), prefix=True, by_creation=True)
        request.sort_order = request.DESCEND  # newest first
        request.limit = min(limit or DEFAULT_RECENT, MAX_RECENT)
        if before is not None:
            request.max_create_revision = before - 1
        response = await self._s.etcd.range(request)
        # Each verdict is its own etcd transaction, so no two share a create revision:
        # resuming below the last one returned skips nothing and repeats nothing.
        token = str(response.kvs[-1].create_revision) if response.more else ""
        records = [locks_pb2.Deadlock.FromString(kv.value) for kv in response.kvs]
        return response.header.revision, records, token


def _revision_of(page_token: str) -> int | None:
    """The create revision a page token names (that of the last deadlock on its page), or
    None when it is not one: revision 1 is etcd's own, so none of ours is below 2."""
    if not re.fullmatch(r"[0-9]{1,19}", page_token) or not 2 <= int(page_token) < 2**63:
        return None
    return int(page_token)
