"""Locks and deadlock detection against a model, on random step sequences, live.

Hypothesis draws a sequence of steps (start an acquire, release a held lock); each
example replays it against both real replicas with fresh agents, leases and namespace,
and after every step settles the service (every wait that must end has ended) and
compares it with a model: per lock a FIFO queue of (agent, mode), where an exclusive
entry holds when first and a shared one when no exclusive entry is ahead; a waiting
agent waits for the entries ahead it conflicts with. Checked after every step:

1. each lock's holders and waiters, in queue order, are the model's;
2. no lock has an exclusive holder beside another holder;
3. a wait ends in DeadlockError only when the step closed a cycle in the model; then
   exactly one wait ends (the one the documented policy picks), its error names a cycle
   of the model's graph, and the model is acyclic without it;
4. with no cycle, every wait the model keeps waiting is still waiting;
5. a lock's fencing tokens grow with every grant, in queue order.

Steps never overlap: each acquire or release is settled before the next, so the model
knows the state at every moment (a cycle can only close when a wait starts, and then
the detector must end exactly one wait). Settling polls with a bound and never sleeps
blindly; after a wait starts it looks once more a moment later, for a wrong verdict.
Three known shapes run first every time (@example); examples are not shrunk, since each
drives live processes for a second or so, and a failure prints the steps it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from accord.client import (
    AsyncClient,
    DeadlockError,
    Grant,
    Lease,
    LockMode,
)
from tests.harness import Coordinator, make_client

AGENTS = 4
LOCKS = 3
EX, SH = LockMode.EXCLUSIVE, LockMode.SHARED
# Bounds on waiting for the service to reach the model's state (never slept through).
SETTLE_SECONDS = 8.0
POLL_SECONDS = 0.02
# After a wait starts, its replica runs the deadlock check; a wrongly ended wait shows
# within this window (and at every later settle).
QUIET_SECONDS = 0.1


# --- steps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Acquire:
    """An agent that waits for nothing starts waiting for a lock it is not queued for
    (the picks choose among those, modulo how many there are)."""

    agent_pick: int
    lock_pick: int
    mode: LockMode
    replica: int
    priority: int


@dataclass(frozen=True)
class Release:
    """An agent that holds locks releases one of them (picked as above)."""

    agent_pick: int
    lock_pick: int
    replica: int


Step = Acquire | Release


@st.composite
def steps_strategy(draw: st.DrawFn) -> Step:
    agent, lock = draw(st.integers(0, AGENTS - 1)), draw(st.integers(0, LOCKS - 1))
    replica = draw(st.integers(0, 1))
    if draw(st.integers(0, 3)) == 0:
        return Release(agent, lock, replica)
    mode = draw(st.sampled_from([EX, EX, EX, SH]))
    return Acquire(agent, lock, mode, replica, draw(st.sampled_from([0, 0, 1])))


# --- the model -----------------------------------------------------------------------


@dataclass
class ModelEntry:
    agent: int
    mode: LockMode
    seq: int  # enqueue order: the order of fencing tokens
    priority: int


def _acyclic(graph: dict[int, set[int]]) -> bool:
    state: dict[int, int] = {}

    def visit(n: int) -> bool:
        state[n] = 1
        for m in graph.get(n, ()):
            if state.get(m) == 1 or (m not in state and not visit(m)):
                return False
        state[n] = 2
        return True

    return all(visit(n) for n in list(graph) if n not in state)


def _reach(graph: dict[int, set[int]], start: int) -> set[int]:
    seen, frontier = {start}, [start]
    while frontier:
        for m in graph.get(frontier.pop(), ()):
            if m not in seen:
                seen.add(m)
                frontier.append(m)
    return seen


@dataclass
class Model:
    queues: list[list[ModelEntry]] = field(default_factory=lambda: [[] for _ in range(LOCKS)])
    counter: itertools.count[int] = field(default_factory=itertools.count)

    @staticmethod
    def holds(queue: list[ModelEntry], index: int) -> bool:
        if queue[index].mode == SH:
            return all(e.mode == SH for e in queue[:index])
        return index == 0

    def entry(self, agent: int, lock: int) -> ModelEntry | None:
        return next((e for e in self.queues[lock] if e.agent == agent), None)

    def holding(self, agent: int, lock: int) -> bool:
        queue = self.queues[lock]
        return any(e.agent == agent and self.holds(queue, i) for i, e in enumerate(queue))

    def held_by(self, agent: int) -> list[int]:
        return [lock for lock in range(LOCKS) if self.holding(agent, lock)]

    def waiting_lock(self, agent: int) -> int | None:
        """The lock the agent waits for (an agent waits for at most one)."""
        waits = [
            lock
            for lock, queue in enumerate(self.queues)
            for i, e in enumerate(queue)
            if e.agent == agent and not self.holds(queue, i)
        ]
        assert len(waits) <= 1, f"agent {agent} waits twice in the model: {waits}"
        return waits[0] if waits else None

    def edges(self) -> set[tuple[int, int, int]]:
        """(waiter, holder, lock): the entries ahead each waiting entry conflicts with."""
        out: set[tuple[int, int, int]] = set()
        for lock, queue in enumerate(self.queues):
            for i, e in enumerate(queue):
                if self.holds(queue, i):
                    continue
                for ahead in queue[:i]:
                    if EX in (e.mode, ahead.mode):
                        out.add((e.agent, ahead.agent, lock))
        return out

    def graph(self) -> dict[int, set[int]]:
        graph: dict[int, set[int]] = {}
        for waiter, holder, _ in self.edges():
            graph.setdefault(waiter, set()).add(holder)
        return graph

    def enqueue(self, agent: int, lock: int, mode: LockMode, priority: int) -> None:
        self.queues[lock].append(ModelEntry(agent, mode, next(self.counter), priority))

    def remove(self, agent: int, lock: int) -> None:
        self.queues[lock] = [e for e in self.queues[lock] if e.agent != agent]

    def victim(self, start: int, lease_ids: list[int]) -> int | None:
        """The agent whose wait the documented policy ends when start's new wait closed a
        cycle (None if it closed none): among the waits of start's strongly connected
        tangle, the first by (priority, youngest wait, highest lease id) whose end alone
        leaves the tangle acyclic."""
        graph = self.graph()
        reverse: dict[int, set[int]] = {}
        for a, bs in graph.items():
            for b in bs:
                reverse.setdefault(b, set()).add(a)
        tangle = _reach(graph, start) & _reach(reverse, start)
        if not any(start in graph.get(m, ()) for m in tangle):
            return None  # start is on no cycle
        inside = {a: graph.get(a, set()) & tangle for a in tangle}

        def policy(agent: int) -> tuple[int, int, int]:
            lock = self.waiting_lock(agent)
            assert lock is not None
            e = self.entry(agent, lock)
            assert e is not None
            return (e.priority, -e.seq, -lease_ids[agent])

        candidates = sorted(tangle, key=policy)
        for candidate in candidates:
            if _acyclic({a: bs for a, bs in inside.items() if a != candidate}):
                return candidate
        return candidates[0]

    def expected_states(self, lease_ids: list[int], names: list[str]) -> dict[str, object]:
        out: dict[str, object] = {}
        for lock, queue in enumerate(self.queues):
            if queue:
                entries = [(lease_ids[e.agent], e.mode.name) for e in queue]
                held = [self.holds(queue, i) for i in range(len(queue))]
                out[names[lock]] = (
                    [e for e, h in zip(entries, held, strict=True) if h],
                    [e for e, h in zip(entries, held, strict=True) if not h],
                )
        return out


# --- the run -------------------------------------------------------------------------


@dataclass
class Wait:
    task: asyncio.Task[Grant]
    lock: int
    mode: LockMode


@dataclass
class Run:
    """One example: the live agents, the model, and what the test saw."""

    clients: list[list[AsyncClient]]  # [agent][replica]
    leases: list[Lease]
    names: list[str]
    model: Model = field(default_factory=Model)
    waits: dict[int, Wait] = field(default_factory=dict)
    tokens: dict[tuple[int, int], int] = field(default_factory=dict)  # (agent, lock) held
    last_token: dict[int, int] = field(default_factory=dict)  # lock -> last grant's token
    victims: int = 0
    older_victims: int = 0
    trace: list[str] = field(default_factory=list)

    @property
    def lease_ids(self) -> list[int]:
        return [lease.id for lease in self.leases]

    def fail(self, message: str) -> AssertionError:
        lines = "\n  ".join(self.trace)
        return AssertionError(f"{message}\nsteps so far:\n  {lines}")

    def agent_of(self, lease_id: int) -> int:
        return self.lease_ids.index(lease_id)

    # --- steps ---

    async def acquire(self, step: Acquire) -> None:
        free = [a for a in range(AGENTS) if a not in self.waits]
        if not free:
            self.trace.append(f"{step}: skipped (every agent waits)")
            return
        a = free[step.agent_pick % len(free)]
        locks = [lock for lock in range(LOCKS) if self.model.entry(a, lock) is None]
        if not locks:
            self.trace.append(f"{step}: skipped (a{a} holds every lock)")
            return
        lock = locks[step.lock_pick % len(locks)]
        self.model.enqueue(a, lock, step.mode, step.priority)
        task = asyncio.create_task(
            self.clients[a][step.replica].locks.acquire(
                self.names[lock],
                self.leases[a],
                mode=step.mode,
                wait=30,
                priority=step.priority,
            )
        )
        self.waits[a] = Wait(task, lock, step.mode)
        edges = self.model.edges()
        victim = self.model.victim(a, self.lease_ids)
        what = "holds" if self.model.holding(a, lock) else "waits"
        if victim is not None:
            what = f"waits, closing a cycle: a{victim} is the victim"
        self.trace.append(
            f"a{a} acquires L{lock} {step.mode.name} (priority {step.priority}) through "
            f"replica {step.replica}: {what}"
        )
        victims: dict[int, set[tuple[int, int, int]]] = {}
        if victim is not None:
            victims[victim] = edges
            self.older_victims += victim != a
            victim_lock = self.model.waiting_lock(victim)
            assert victim_lock is not None
            self.model.remove(victim, victim_lock)
            assert _acyclic(self.model.graph()), "the model's victim left a cycle"
        await self.settle(
            replica=step.replica, victims=victims, quiet=victim is None and a in self.waiting()
        )

    async def release(self, step: Release) -> None:
        holding = [a for a in range(AGENTS) if self.model.held_by(a)]
        if not holding:
            self.trace.append(f"{step}: skipped (nobody holds a lock)")
            return
        a = holding[step.agent_pick % len(holding)]
        held = self.model.held_by(a)
        lock = held[step.lock_pick % len(held)]
        self.trace.append(f"a{a} releases L{lock} through replica {step.replica}")
        was_holding = await self.clients[a][step.replica].locks.release(
            self.names[lock], self.leases[a]
        )
        if not was_holding:
            raise self.fail(f"the release of L{lock} by a{a} says it was not holding")
        self.model.remove(a, lock)
        del self.tokens[a, lock]
        await self.settle(replica=step.replica)

    def waiting(self) -> set[int]:
        """Agents the model has waiting."""
        return {a for a in range(AGENTS) if self.model.waiting_lock(a) is not None}

    # --- settling and the invariants ---

    async def settle(
        self,
        *,
        replica: int,
        victims: dict[int, set[tuple[int, int, int]]] | None = None,
        quiet: bool = False,
    ) -> None:
        """Wait (bounded) until every wait the model ended has ended as the model says and
        the service's queues are the model's; then check the invariants."""
        victims = dict(victims or {})
        expected = ", ".join(f"a{v}" for v in victims) or "none, as it has no cycle"
        granted: dict[int, list[tuple[int, int]]] = {}  # lock -> [(token, agent)] this step
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        mismatch: object = None
        while True:
            self._collect(victims, granted, expected)
            owed = [
                a for a in self.waits if a in victims or self.model.holding(a, self.waits[a].lock)
            ]
            if not owed:
                mismatch = await self._compare(replica)
                if mismatch is None:
                    if not quiet:
                        break
                    quiet = False  # look once more, a moment later
                    await asyncio.sleep(QUIET_SECONDS)
                    continue
            if loop.time() > deadline:
                detail = (
                    f"waits that should have ended did not: {owed}"
                    if owed
                    else f"the service does not match the model: {mismatch}"
                )
                raise self.fail(f"not settled after {SETTLE_SECONDS}s: {detail}")
            await asyncio.sleep(POLL_SECONDS)
        # 5. fencing tokens grow with each grant of a lock, in queue order.
        for lock, new in granted.items():
            new.sort()
            tokens = [t for t, _ in new]
            order = [e.agent for e in self.model.queues[lock] if e.agent in {a for _, a in new}]
            if [a for _, a in new] != order:
                raise self.fail(f"L{lock} granted out of queue order: {new} vs {order}")
            if len(set(tokens)) != len(tokens) or tokens[0] <= self.last_token.get(lock, 0):
                raise self.fail(
                    f"L{lock}: token(s) {tokens} after {self.last_token.get(lock)}: not increasing"
                )
            self.last_token[lock] = tokens[-1]

    def _collect(
        self,
        victims: dict[int, set[tuple[int, int, int]]],
        granted: dict[int, list[tuple[int, int]]],
        expected: str,
    ) -> None:
        """Check every wait that has ended against the model."""
        for a, wait in list(self.waits.items()):
            if not wait.task.done():
                continue
            del self.waits[a]
            error = wait.task.exception()
            if a in victims:
                if not isinstance(error, DeadlockError):
                    raise self.fail(f"a{a} should be a deadlock victim, ended with {error!r}")
                self._check_verdict(a, wait, error, victims.pop(a))
                continue
            if isinstance(error, DeadlockError):
                raise self.fail(
                    f"a{a}'s wait for L{wait.lock} ended as a deadlock victim; the model's "
                    f"victim: {expected}. {error!r}"
                )
            if error is not None:
                raise self.fail(f"a{a}'s wait for L{wait.lock} ended: {error!r}")
            grant = wait.task.result()
            if not self.model.holding(a, wait.lock):
                raise self.fail(f"a{a} was granted L{wait.lock} while the model has it waiting")
            if (grant.name, grant.lease_id, grant.mode) != (
                self.names[wait.lock],
                self.leases[a].id,
                wait.mode,
            ):
                raise self.fail(f"a{a}'s grant is not what it asked for: {grant}")
            self.tokens[a, wait.lock] = grant.token
            granted.setdefault(wait.lock, []).append((grant.token, a))

    def _check_verdict(
        self, a: int, wait: Wait, error: DeadlockError, edges: set[tuple[int, int, int]]
    ) -> None:
        """3. The victim's error names itself and a cycle of the model's graph."""
        self.victims += 1
        deadlock = error.deadlock
        if deadlock is None:
            raise self.fail(f"a{a}'s DeadlockError carries no Deadlock detail")
        if (deadlock.victim_lease, deadlock.victim_lock) != (
            self.leases[a].id,
            self.names[wait.lock],
        ):
            raise self.fail(f"a{a}'s verdict names another victim: {deadlock}")
        cycle = [
            (
                self.agent_of(e.waiter_lease),
                self.agent_of(e.holder_lease),
                self.names.index(e.lock),
            )
            for e in deadlock.cycle
        ]
        closed = all(cycle[i][1] == cycle[(i + 1) % len(cycle)][0] for i in range(len(cycle)))
        if not cycle or not closed or not set(cycle) <= edges:
            raise self.fail(f"a{a}'s verdict names no cycle of the model: {cycle}, {edges}")
        if (a, wait.lock) not in {(w, lock) for w, _, lock in cycle}:
            raise self.fail(f"a{a}'s verdict's cycle does not run through its wait: {cycle}")

    async def _compare(self, replica: int) -> object:
        """None when the service's queues are the model's, else what differs. Checks
        invariant 2 and token order on what the service shows."""
        states = await self.clients[0][replica].locks.list()
        seen: dict[str, object] = {}
        for state in states:
            holders = [(h.lease_id, LockMode(h.mode).name) for h in state.holders]
            waiters = [(w.lease_id, LockMode(w.mode).name) for w in state.waiters]
            seen[state.name] = (holders, waiters)
            # 2. never an exclusive holder beside another holder
            if len(state.holders) > 1 and any(h.mode == EX for h in state.holders):
                raise self.fail(f"{state.name} has an exclusive holder among others: {holders}")
            tokens = [e.token for e in [*state.holders, *state.waiters]]
            if tokens != sorted(set(tokens)):
                raise self.fail(f"{state.name}'s queue is not in token order: {tokens}")
            for h in state.holders:
                lock, agent = self.names.index(state.name), self.agent_of(h.lease_id)
                known = self.tokens.get((agent, lock))
                if known is not None and known != h.token:
                    raise self.fail(f"a{agent} holds L{lock} with {h.token}, granted {known}")
        expected = self.model.expected_states(self.lease_ids, self.names)
        if seen == expected:
            return None
        return f"service {seen} != model {expected}"


async def run_example(addresses: list[str], namespace: str, steps: list[Step]) -> Run:
    clients = [
        [make_client([address], namespace, agent=f"a{i}") for address in addresses]
        for i in range(AGENTS)
    ]
    leases: list[Lease] = []
    run: Run | None = None
    try:
        for i in range(AGENTS):
            leases.append(await clients[i][i % 2].leases.grant(ttl=15))
        run = Run(clients, leases, [f"L{i}" for i in range(LOCKS)])
        for step in steps:
            if isinstance(step, Acquire):
                await run.acquire(step)
            else:
                await run.release(step)
        # 4 again, at the end: nothing the model keeps waiting was ended meanwhile.
        await run.settle(replica=0, quiet=bool(run.waits))
        recorded = await clients[0][1].locks.deadlocks(limit=100)
        if len(recorded) != run.victims:
            raise run.fail(f"{len(recorded)} deadlock verdicts recorded, {run.victims} seen")
        return run
    finally:
        if run is not None:
            for wait in run.waits.values():
                wait.task.cancel()
            await asyncio.gather(*(w.task for w in run.waits.values()), return_exceptions=True)
        for lease in leases:
            with contextlib.suppress(Exception):
                await lease.revoke()
        for pair in clients:
            for client in pair:
                await client.close()


# Known shapes first, every run (picks as the steps interpret them):
# a cycle of three across both replicas, one wait in it shared; the youngest wait ends.
THREE_CYCLE = [
    Acquire(0, 0, EX, 0, 0),  # a0 holds L0
    Acquire(1, 1, EX, 1, 0),  # a1 holds L1
    Acquire(2, 2, EX, 0, 0),  # a2 holds L2
    Acquire(0, 0, EX, 1, 0),  # a0 waits for L1
    Acquire(0, 1, SH, 0, 0),  # a1 waits for L2, shared
    Acquire(0, 0, EX, 1, 0),  # a2 waits for L0: the cycle closes, a2's wait ends
    Release(2, 0, 0),  # a2 releases L2: a1 holds it, shared
    Release(1, 0, 1),  # a1 releases L1: a0 holds it
]
# A higher priority protects the wait that closes a cycle: the older wait ends, and the
# shared wait queued behind it holds at once.
PRIORITY_VICTIM = [
    Acquire(0, 1, EX, 0, 0),  # a0 holds L1
    Acquire(1, 0, SH, 1, 0),  # a1 holds L0, shared
    Acquire(0, 0, EX, 1, 0),  # a0 waits for L0
    Acquire(2, 0, SH, 0, 0),  # a3 waits for L0 behind a0, shared
    Acquire(0, 0, EX, 0, 1),  # a1 waits for L1 (priority 1): a0's wait ends, a3 holds
    Release(0, 0, 1),  # a0 releases L1: a1 holds it
]

# Two shared waits behind an exclusive holder both hold when it goes (each is woken).
SHARED_BATCH = [
    Acquire(0, 0, EX, 0, 0),  # a0 holds L0
    Acquire(1, 0, SH, 1, 0),  # a1 waits for L0, shared
    Acquire(2, 0, SH, 0, 0),  # a3 waits for L0, shared
    Release(0, 0, 1),  # a0 releases L0: a1 and a3 hold it
]


examples = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    # Each example drives live processes: no shrinking (a failure prints its steps).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(steps_strategy(), min_size=10, max_size=12))
@example(steps=THREE_CYCLE)
@example(steps=PRIORITY_VICTIM)
@example(steps=SHARED_BATCH)
async def test_locks_follow_the_model(
    replicas: list[Coordinator], namespace: str, steps: list[Step]
) -> None:
    # A fresh namespace (so fresh locks and deadlock records) for every example.
    run = await run_example([r.address for r in replicas], f"{namespace}-{next(examples)}", steps)
    event(f"deadlocks: {min(run.victims, 3)}{'+' if run.victims >= 3 else ''}")
    if run.older_victims:
        event("a deadlock ended an older wait than the one that closed it")
