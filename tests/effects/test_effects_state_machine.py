"""The effect ledger against a model, on random step sequences, live.

A hypothesis RuleBasedStateMachine drives three agents (each with a lease and a client
per replica) over a few effect keys in two runs, through both real replicas, and keeps
a model of the ledger: per effect its state, holder, claim, attempts, outcome and
registered compensation; per run its status and journal order. Steps: Begin (every
answer: PROCEED, DONE, IN_DOUBT, BUSY; a retried Begin; a reworded summary; a
reconciled claim), two agents racing a Begin through the two replicas, several new
effects of a run begun at once (group commit may write them at one revision), a Begin
that waits on a holder who meanwhile completes, aborts or loses its lease, Complete (and
Complete again: the first outcome stands, replayed), Abort, a zombie's Complete or
Abort with a claim it lost, an intent mismatch or another run named, a lease revoked
(its effects fall in doubt), SetRunStatus, Compensate and Begin of its compensations.
After every step:

1. each Begin/Complete/Abort answer is the model's (outcome, state, claim, attempts,
   holder, recorded outcome, began revision); a claim is new (higher) exactly when the
   model says the effect was claimed again, and a retried Begin gets the same claim; an
   effect begun alone began after every earlier one;
2. a refused call (NOT_HELD, INTENT_MISMATCH, NOTHING_TO_COMPENSATE, INVALID_ARGUMENT,
   NOT_FOUND, CONDITION_FAILED) names the current effect where the contract says so,
   and changes nothing in etcd;
3. every effect read back (Get, through either replica) is the model's, and so are List's
   pages (3 effects a page) of the effects in one state and of one run's, in turn;
4. each run read back (GetRun) has the model's status, counts, journal (in the order the
   effects began) and resume point.

A fixed walk through every answer runs first (test_effects_walk_the_known_path, which
also checks that it still shows each), and test_effects_begun_together begins 16
effects of a run at once, so that some share a revision, and compensates them. Each
hypothesis example is a fresh namespace; examples are bounded and not shrunk (each step
drives live processes; a failure prints its steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from accord.client import (
    AccordError,
    AsyncClient,
    ConditionFailedError,
    IntentMismatchError,
    InvalidArgumentError,
    Lease,
    NotFoundError,
    NotHeldError,
    NothingToCompensateError,
)
from accord.v1 import effects_pb2
from tests.harness import Coordinator, EtcdMember, EtcdStubs, make_client

T = TypeVar("T")

AGENTS = 3
KEYS = 6  # effect keys k0..k5; key i belongs to run i % RUNS
RUNS = 2
LEASE_TTL = 30  # never ends on its own during an example: revoked by a step instead
WAIT = 10.0  # seconds a waiting Begin may wait (its holder ends its claim at once)
LIST_PAGE = 3  # List's page size in the checks: several pages
TOGETHER = 16  # effects begun at once through one replica by test_effects_begun_together
HEAD_START = 0.05  # for the waiting Begin to reach its replica first (mostly)
E = effects_pb2


class State(IntEnum):
    ABSENT = 0  # not begun (EFFECT_STATE_UNSPECIFIED)
    RUNNING = E.EFFECT_STATE_RUNNING
    IN_DOUBT = E.EFFECT_STATE_IN_DOUBT
    ABORTED = E.EFFECT_STATE_ABORTED
    SUCCEEDED = E.EFFECT_STATE_SUCCEEDED
    FAILED = E.EFFECT_STATE_FAILED


FINAL = (State.SUCCEEDED, State.FAILED)


class Answer(IntEnum):
    PROCEED = E.BEGIN_OUTCOME_PROCEED
    DONE = E.BEGIN_OUTCOME_DONE
    IN_DOUBT = E.BEGIN_OUTCOME_IN_DOUBT
    BUSY = E.BEGIN_OUTCOME_BUSY


class RunStatus(IntEnum):
    RUNNING = E.RUN_STATUS_RUNNING
    FINISHED = E.RUN_STATUS_FINISHED
    FAILED = E.RUN_STATUS_FAILED
    COMPENSATING = E.RUN_STATUS_COMPENSATING
    COMPENSATED = E.RUN_STATUS_COMPENSATED


# --- the model -----------------------------------------------------------------------


@dataclass(frozen=True)
class Intent:
    tool: str
    arguments: bytes
    summary: str = ""


@dataclass
class ModelEffect:
    key: str
    run: str
    intent: Intent
    # Journal position: the revision of the Begin that created it (Begins sent together
    # may share one, through group commit), then the key.
    order: tuple[int, str]
    began_by: int  # agent
    compensates: str = ""
    state: State = State.RUNNING
    holder: int | None = None  # agent holding the claim while RUNNING
    holder_lease: int = 0  # the lease of the current (or last) claim
    claim: int = 0  # the current (or last) claim token, as the service gave it
    attempts: int = 1
    outcome: tuple[bool, bytes | str] | None = None  # (success, result or error)
    compensation: Intent | None = None


@dataclass
class ModelRun:
    run_id: str
    status: RunStatus = RunStatus.RUNNING
    compensating: bool = False  # Compensate was called: no new compensations registered


def compensated_by(key: str) -> str:
    """The key a compensation's effect compensates ("" for an ordinary effect)."""
    return key.removeprefix("compensate:") if key.startswith("compensate:") else ""


def compensation_key(key: str) -> str:
    """The contract's derived key (shared decisions: "compensate:" + the key, while it
    fits 256 bytes; the keys here always do)."""
    return "compensate:" + key


@dataclass
class Model:
    effects: dict[str, ModelEffect] = field(default_factory=dict)
    runs: dict[str, ModelRun] = field(default_factory=dict)
    last_began: int = 0  # the highest began revision seen

    def journal(self, run_id: str) -> list[ModelEffect]:
        return sorted((e for e in self.effects.values() if e.run == run_id), key=lambda e: e.order)

    def compensations(self, run_id: str) -> list[ModelEffect]:
        """The run's effects with a registered compensation, newest first."""
        return [e for e in reversed(self.journal(run_id)) if e.compensation is not None]

    def run_status(self, run_id: str) -> RunStatus:
        run = self.runs[run_id]
        if run.status is RunStatus.COMPENSATING and all(
            (c := self.effects.get(compensation_key(e.key))) is not None and c.state in FINAL
            for e in self.compensations(run_id)
        ):
            return RunStatus.COMPENSATED
        return run.status

    def resume_at(self, run_id: str) -> str:
        return next((e.key for e in self.journal(run_id) if e.state not in FINAL), "")

    def begin(self, key: str, agent: int, reconciled: bool) -> Answer:
        """The answer a Begin of an existing effect gets (its model updated on PROCEED by
        the caller, which knows the claim)."""
        effect = self.effects[key]
        if effect.state in FINAL:
            return Answer.DONE
        if effect.state is State.RUNNING:
            return Answer.PROCEED if effect.holder == agent else Answer.BUSY
        if effect.state is State.IN_DOUBT and not reconciled:
            return Answer.IN_DOUBT
        return Answer.PROCEED  # ABORTED, or IN_DOUBT reconciled


# --- the live side -------------------------------------------------------------------


@dataclass
class Agent:
    index: int
    clients: list[AsyncClient]  # one per replica
    lease: Lease
    # claims it was given and lost (lease revoked, effect claimed again): key -> (claim,
    # lease id), for a zombie's Complete
    lost: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"a{self.index}"


def effect_detail(error: AccordError) -> E.Effect | None:
    return next((d for d in error.details if isinstance(d, E.Effect)), None)


class EffectsMachine(RuleBasedStateMachine):
    """One example: fresh agents in a fresh namespace. Set `addresses`, `etcd` and
    `namespace_prefix` on a subclass (the test does)."""

    addresses: ClassVar[list[str]] = []
    etcd: EtcdMember
    namespace_prefix = "sm"
    examples = itertools.count()
    seen: ClassVar[Counter[str]]  # what happened, over every example (set by the test)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.namespace = f"{self.namespace_prefix}-{next(self.examples)}"
        self.model = Model()
        self.agents: list[Agent] = []
        self.trace: list[str] = []
        self.claims_seen: dict[str, int] = {}  # key -> highest claim token seen
        self.raw: EtcdStubs | None = None  # etcd itself, to see that refusals change nothing

    # --- plumbing ---

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def fail(self, message: str) -> AssertionError:
        steps = "\n  ".join(self.trace)
        return AssertionError(f"{message}\nsteps so far ({self.namespace}):\n  {steps}")

    def note(self, what: str) -> None:
        """Something that happened, for hypothesis' statistics and the coverage check."""
        if currently_in_test_context():
            event(what)
        self.seen[what] += 1

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            raise self.fail(message)

    def etcd_stubs(self) -> EtcdStubs:
        assert self.raw is not None
        return self.raw

    def stored(self) -> list[tuple[bytes, bytes, int, int]]:
        """Every key of the namespace in etcd (read straight from etcd)."""
        from aetcd.rpc import rpc_pb2 as rpc

        prefix = f"accord/ns/{self.namespace}/".encode()

        async def read() -> Any:
            # The stub's call is made inside the loop: made outside it, grpc.aio asks
            # asyncio for the current loop, which an earlier asyncio.run() left unset.
            request = rpc.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0")
            return await self.etcd_stubs().kv.Range(request)

        found = self.run(read())
        return [(kv.key, kv.value, kv.mod_revision, kv.lease) for kv in found.kvs]

    def refused(self, call: Awaitable[Any], kind: type[AccordError], what: str) -> AccordError:
        """Run a call that must be refused with `kind` and change nothing in etcd."""
        before = self.stored()
        try:
            answer = self.run(call)  # type: ignore[arg-type]
        except kind as error:
            self.check(self.stored() == before, f"{what}: refused, but etcd changed")
            return error
        except AccordError as error:
            raise self.fail(f"{what}: expected {kind.__name__}, got {error!r}") from error
        raise self.fail(f"{what}: expected {kind.__name__}, got an answer: {answer}")

    def effects(self, agent: int, replica: int) -> Any:
        return self.agents[agent].clients[replica].effects

    def key_of(self, pick: int) -> str:
        return f"k{pick % KEYS}"

    def run_of(self, key: str) -> str:
        return f"r{int(key[1:]) % RUNS}"

    def intent_of(self, key: str) -> Intent:
        effect = self.model.effects.get(key)
        if effect is not None:
            return effect.intent
        return Intent("tool." + key, json.dumps({"key": key, "n": 1}, sort_keys=True).encode())

    def see_claim(self, key: str, claim: int, new: bool) -> None:
        """1. A claim grows exactly when the effect was claimed again."""
        last = self.claims_seen.get(key, 0)
        if new:
            self.check(claim > last, f"{key}: new claim {claim} not above {last}")
        else:
            self.check(claim == last, f"{key}: claim {claim}, expected the same {last}")
        self.claims_seen[key] = claim

    # --- the live calls (the thin client, one place) ---

    async def _begin(
        self,
        agent: int,
        replica: int,
        key: str,
        run_id: str,
        intent: Intent,
        reconciled: bool,
        wait: float = 0.0,
    ) -> tuple[Answer, E.Effect]:
        answer = await self.effects(agent, replica).begin(
            key,
            run_id,
            E.Intent(tool=intent.tool, arguments=intent.arguments, summary=intent.summary),
            lease=self.agents[agent].lease,
            reconciled=reconciled,
            wait=wait,
        )
        return Answer(answer.outcome), answer.effect

    async def _complete(
        self,
        agent: int,
        replica: int,
        key: str,
        claim: int,
        lease_id: int,
        outcome: tuple[bool, bytes | str],
        compensation: Intent | None,
    ) -> tuple[E.Effect, bool]:
        success, value = outcome
        extra: dict[str, Any] = {}
        if compensation is not None:
            extra["compensation"] = E.Intent(
                tool=compensation.tool, arguments=compensation.arguments
            )
        if success:
            extra["result"] = value
        else:
            extra["error"] = value
        done = await self.effects(agent, replica).complete(key, claim, lease=lease_id, **extra)
        return done.effect, done.replayed

    # --- setup and teardown ---

    @initialize()
    def start(self) -> None:
        async def start() -> list[Agent]:
            self.raw = EtcdStubs(self.etcd.endpoint)
            agents = []
            for i in range(AGENTS):
                clients = [make_client([a], self.namespace, agent=f"a{i}") for a in self.addresses]
                lease = await clients[i % 2].leases.grant(ttl=LEASE_TTL)
                agents.append(Agent(i, clients, lease))
            return agents

        self.agents = self.run(start())

    def teardown(self) -> None:
        async def stop() -> None:
            for agent in self.agents:
                with contextlib.suppress(Exception):
                    await agent.lease.revoke()
                for client in agent.clients:
                    await client.close()
            if self.raw is not None:  # an example that ended before its first step
                await self.raw.close()

        try:
            self.run(stop())
        finally:
            self.loop.close()

    # --- steps ---
    # No rule has a precondition: whether one could act may depend on a race's winner,
    # and hypothesis needs the same choices to pick the same rules (else its data
    # generation is "flaky"); a rule with nothing to act on does nothing.

    @rule(
        agent=st.integers(0, AGENTS - 1),
        pick=st.integers(0, KEYS - 1),
        replica=st.integers(0, 1),
        reconciled=st.booleans(),
        reword=st.booleans(),
    )
    def begin(self, agent: int, pick: int, replica: int, reconciled: bool, reword: bool) -> None:
        """Begin a key: a new effect, or whatever state it is in. A reworded summary
        changes nothing (the intent is the tool and its arguments)."""
        key = self.key_of(pick)
        self.begin_key(
            agent, key, self.run_of(key), self.intent_of(key), replica, reconciled, reword
        )

    def begin_key(
        self,
        agent: int,
        key: str,
        run_id: str,
        intent: Intent,
        replica: int,
        reconciled: bool,
        reword: bool,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """Begin a key and check the answer against the model. With `meanwhile`: the
        Begin waits (BUSY with a wait) while meanwhile() ends the holder's claim, and is
        then answered as a fresh Begin would be (whenever it reached its replica)."""
        if reword:
            intent = Intent(intent.tool, intent.arguments, f"reworded by a{agent}")
        begin = self._begin(
            agent, replica, key, run_id, intent, reconciled, WAIT if meanwhile else 0
        )
        if meanwhile is not None:
            self.trace.append(f"a{agent} begins {key} via replica {replica}, waiting {WAIT} s")
            waiting = self.loop.create_task(begin)
            self.run(asyncio.sleep(HEAD_START))  # not needed for the answer, only the wait
            meanwhile()
        effect = self.model.effects.get(key)
        expected = Answer.PROCEED if effect is None else self.model.begin(key, agent, reconciled)
        self.trace.append(
            f"a{agent} begins {key} via replica {replica} (reconciled={reconciled}): "
            f"expect {expected.name}"
        )
        answer, got = self.run(waiting if meanwhile is not None else begin)
        if meanwhile is not None:
            self.note(f"begin, waiting: {answer.name}")
        self.check(answer is expected, f"{key}: Begin answered {answer.name}, not {expected.name}")
        self.note(f"begin: {answer.name}" + (" (new)" if effect is None else ""))
        if effect is None:
            effect = self.created(agent, key, run_id, intent, got)
        elif answer is Answer.PROCEED:
            again = effect.state is State.RUNNING  # a retried Begin: the same claim
            self.note(
                "begin: PROCEED, retried" if again else f"begin: PROCEED, {effect.state.name}"
            )
            if not again:
                effect.attempts += 1
                self.lose_claim(effect)
            effect.state, effect.holder = State.RUNNING, agent
            effect.holder_lease = self.agents[agent].lease.id
            self.see_claim(key, got.claim, new=not again)
            effect.claim = got.claim
        self.check_effect(got, effect, f"{key}: Begin's effect")

    @rule(
        agents=st.tuples(st.integers(0, AGENTS - 1), st.integers(0, AGENTS - 1)).filter(
            lambda p: p[0] != p[1]
        ),
        pick=st.integers(0, KEYS - 1),
    )
    def race(self, agents: tuple[int, int], pick: int) -> None:
        """Two agents Begin one key at once through the two replicas: where either alone
        would be told PROCEED, exactly one is, and the other is told BUSY with the
        winner's claim."""
        key = self.key_of(pick)
        effect = self.model.effects.get(key)
        if effect is not None and effect.state is not State.ABORTED:
            self.begin(agents[0], pick, 0, False, False)
            return
        intent, run_id = self.intent_of(key), self.run_of(key)
        self.trace.append(f"a{agents[0]} and a{agents[1]} race to begin {key}")

        async def both() -> list[tuple[Answer, E.Effect]]:
            return await asyncio.gather(
                *(self._begin(a, r, key, run_id, intent, False) for r, a in enumerate(agents))
            )

        answers = self.run(both())
        outcomes = sorted(a.name for a, _ in answers)
        self.check(outcomes == ["BUSY", "PROCEED"], f"{key}: the race answered {outcomes}")
        winner = next(i for i, (a, _) in enumerate(answers) if a is Answer.PROCEED)
        agent, won = agents[winner], answers[winner][1]
        busy = answers[1 - winner][1]
        self.trace.append(f"  a{agent} won {key}")
        self.note("race: one PROCEED, one BUSY")
        if effect is None:
            effect = self.created(agent, key, run_id, intent, won)
        else:
            effect.attempts += 1
            self.lose_claim(effect)
            effect.state, effect.holder = State.RUNNING, agent
            effect.holder_lease = self.agents[agent].lease.id
            self.see_claim(key, won.claim, new=True)
            effect.claim = won.claim
        self.check_effect(won, effect, f"{key}: the winner's effect")
        self.check_effect(busy, effect, f"{key}: the loser's effect")

    def created(
        self, agent: int, key: str, run_id: str, intent: Intent, got: E.Effect, alone: bool = True
    ) -> ModelEffect:
        """A new effect, begun by the agent (PROCEED): into the model, at its place in
        the journal. Begun alone, it began after every effect before it."""
        if alone:
            self.check(
                got.began_revision > self.model.last_began,
                f"{key}: began at {got.began_revision}, not after {self.model.last_began}",
            )
        self.model.last_began = max(self.model.last_began, got.began_revision)
        effect = ModelEffect(
            key, run_id, intent, (got.began_revision, key), agent,
            compensates=compensated_by(key),
        )  # fmt: skip
        self.model.effects[key] = effect
        self.model.runs.setdefault(run_id, ModelRun(run_id))
        effect.holder, effect.holder_lease = agent, self.agents[agent].lease.id
        self.see_claim(key, got.claim, new=True)
        effect.claim = got.claim
        return effect

    @rule(
        agent=st.integers(0, AGENTS - 1), pick=st.integers(0, RUNS - 1), replica=st.integers(0, 1)
    )
    def begin_together(self, agent: int, pick: int, replica: int) -> None:
        """Agents begin every key of a run that no one began yet, all at once through
        one replica, so that group commit may write several in one transaction (sharing
        a revision: the journal orders those by key)."""
        keys = [f"k{i}" for i in range(pick, KEYS, RUNS) if f"k{i}" not in self.model.effects]
        if len(keys) >= 2:
            self.begin_all(agent, keys, f"r{pick}", replica)

    def begin_all(self, agent: int, keys: list[str], run_id: str, replica: int) -> None:
        who = [(agent + i) % AGENTS for i in range(len(keys))]
        self.trace.append(f"{', '.join(f'a{a}' for a in who)} begin {keys} at once")

        async def together() -> list[tuple[Answer, E.Effect]]:
            return await asyncio.gather(
                *(
                    self._begin(a, replica, key, run_id, self.intent_of(key), False)
                    for a, key in zip(who, keys, strict=True)
                )
            )

        answers = self.run(together())
        for a, key, (answer, got) in zip(who, keys, answers, strict=True):
            self.check(answer is Answer.PROCEED, f"{key}: begun with others, told {answer.name}")
            effect = self.created(a, key, run_id, self.intent_of(key), got, alone=False)
            self.check_effect(got, effect, f"{key}: Begin's effect")
        shared = len({got.began_revision for _, got in answers}) < len(answers)
        self.note("begun together" + (", sharing a revision" if shared else ""))

    def lose_claim(self, effect: ModelEffect) -> None:
        """The effect is claimed again: its last claim is lost (a zombie may still try)."""
        if effect.holder is not None:
            self.agents[effect.holder].lost[effect.key] = (effect.claim, effect.holder_lease)

    def held(self, agent: int) -> list[ModelEffect]:
        return sorted(
            (
                e
                for e in self.model.effects.values()
                if e.holder == agent and e.state is State.RUNNING
            ),
            key=lambda e: e.key,
        )

    @rule(
        agent=st.integers(0, AGENTS - 1),
        pick=st.integers(0, KEYS),
        replica=st.integers(0, 1),
        success=st.booleans(),
        register=st.booleans(),
        twice=st.booleans(),
    )
    def complete(
        self, agent: int, pick: int, replica: int, success: bool, register: bool, twice: bool
    ) -> None:
        """The holder completes (registering a compensation with some successes);
        completing again replays the first outcome."""
        holders = [a for a in range(AGENTS) if self.held(a)]
        if not holders:
            return
        agent = holders[agent % len(holders)]
        effect = self.held(agent)[pick % len(self.held(agent))]
        self.finish(agent, effect, replica, success, register, twice)

    def finish(
        self,
        agent: int,
        effect: ModelEffect,
        replica: int,
        success: bool,
        register: bool,
        twice: bool,
    ) -> None:
        outcome: tuple[bool, bytes | str] = (
            (True, json.dumps({"done": effect.key}).encode()) if success else (False, "boom")
        )
        run = self.model.runs[effect.run]
        compensation = None
        if success and register and not effect.compensates and not run.compensating:
            compensation = Intent("undo." + effect.intent.tool, effect.intent.arguments)
        self.trace.append(
            f"a{agent} completes {effect.key} via replica {replica}: "
            + ("success" if success else "failure")
            + (", with a compensation" if compensation else "")
        )
        lease_id = self.agents[agent].lease.id
        got, replayed = self.run(
            self._complete(
                agent, replica, effect.key, effect.claim, lease_id, outcome, compensation
            )
        )
        self.check(not replayed, f"{effect.key}: a first Complete said replayed")
        self.note("complete" + (", a compensation" if effect.compensates else ""))
        effect.state = State.SUCCEEDED if success else State.FAILED
        effect.outcome, effect.compensation, effect.holder = outcome, compensation, None
        self.check_effect(got, effect, f"{effect.key}: Complete's effect")
        if twice:
            other: tuple[bool, bytes | str] = (False, "second outcome, ignored")
            self.trace.append(f"a{agent} completes {effect.key} again: replayed")
            again, replayed = self.run(
                self._complete(agent, 1 - replica, effect.key, effect.claim, lease_id, other, None)
            )
            self.check(replayed, f"{effect.key}: a second Complete was not replayed")
            self.note("complete: replayed")
            self.check_effect(again, effect, f"{effect.key}: the replayed effect")

    @rule(agent=st.integers(0, AGENTS - 1), pick=st.integers(0, KEYS), replica=st.integers(0, 1))
    def abort(self, agent: int, pick: int, replica: int) -> None:
        holders = [a for a in range(AGENTS) if self.held(a)]
        if not holders:
            return
        agent = holders[agent % len(holders)]
        self.release(agent, self.held(agent)[pick % len(self.held(agent))], replica)

    def release(self, agent: int, effect: ModelEffect, replica: int) -> None:
        self.trace.append(f"a{agent} aborts {effect.key} via replica {replica}")
        got = self.run(
            self.effects(agent, replica).abort(
                effect.key, effect.claim, lease=self.agents[agent].lease, reason="changed my mind"
            )
        )
        effect.state, effect.holder = State.ABORTED, None
        self.note("abort")
        self.agents[agent].lost[effect.key] = (effect.claim, effect.holder_lease)
        self.check_effect(got, effect, f"{effect.key}: Abort's effect")

    @rule(
        agent=st.integers(0, AGENTS - 1),
        pick=st.integers(0, KEYS),
        replica=st.integers(0, 1),
        abort=st.booleans(),
    )
    def zombie_complete(self, agent: int, pick: int, replica: int, abort: bool) -> None:
        """An agent completes (or aborts) with a claim it lost. Complete: refused with
        the effect as it is now, or, once the effect has an outcome, that outcome
        replayed. Abort: refused (NOT_HELD; CONDITION_FAILED once it has an outcome),
        unless that claim aborted it (then answered as it is). Nothing changes."""
        zombies = [a for a in self.agents if a.lost]
        if not zombies:
            return
        zombie = zombies[agent % len(zombies)]
        key = sorted(zombie.lost)[pick % len(zombie.lost)]
        claim, lease_id = zombie.lost[key]
        effect = self.model.effects[key]
        verb = "aborts" if abort else "completes"
        self.trace.append(f"{zombie.name} {verb} {key} with its lost claim {claim}")
        what = f"{key}: a zombie's {'Abort' if abort else 'Complete'}"
        if abort:
            call: Awaitable[Any] = self.effects(zombie.index, replica).abort(
                key, claim, lease=lease_id, reason="zombie"
            )
        else:
            call = self._complete(zombie.index, replica, key, claim, lease_id, (True, b"z"), None)
        if effect.state in FINAL and not abort:
            before = self.stored()
            got, replayed = self.run(call)  # type: ignore[arg-type]
            self.check(replayed and self.stored() == before, f"{what}: not a pure replay")
            self.check_effect(got, effect, f"{what}: the replayed effect")
            self.note(f"zombie complete: replayed, the effect {effect.state.name}")
            return
        if abort and effect.state is State.ABORTED and effect.claim == claim:
            before = self.stored()  # its own Abort again: answered as it is
            got = self.run(call)  # type: ignore[arg-type]
            self.check(self.stored() == before, f"{what}: an Abort again changed etcd")
            self.check_effect(got, effect, f"{what}: the effect aborted again")
            self.note("zombie abort: its own abort again")
            return
        if effect.state in FINAL:
            self.refused(call, ConditionFailedError, what)
            self.note(f"zombie abort: CONDITION_FAILED, the effect {effect.state.name}")
            return
        error = self.refused(call, NotHeldError, what)
        current = effect_detail(error)
        self.check(current is not None, f"{what}: NOT_HELD without the effect: {error!r}")
        assert current is not None
        self.check_effect(current, effect, f"{what}: NOT_HELD's effect")
        self.note(
            f"zombie {'abort' if abort else 'complete'}: NOT_HELD, the effect {effect.state.name}"
        )

    @rule(
        agent=st.integers(0, AGENTS - 1),
        pick=st.integers(0, KEYS),
        replica=st.integers(0, 1),
        other_run=st.booleans(),
    )
    def misbegin(self, agent: int, pick: int, replica: int, other_run: bool) -> None:
        """Begin a known key with other arguments (INTENT_MISMATCH with the recorded
        effect) or in another run (INVALID_ARGUMENT): nothing changes."""
        keys = sorted(self.model.effects)
        if not keys:
            return
        key = keys[pick % len(keys)]
        effect = self.model.effects[key]
        if other_run:
            self.trace.append(f"a{agent} begins {key} in another run")
            self.refused(
                self._begin(agent, replica, key, effect.run + "-other", effect.intent, False),
                InvalidArgumentError,
                f"{key}: Begin in another run",
            )
            self.note("begin: INVALID_ARGUMENT (another run)")
            return
        other = Intent(effect.intent.tool, effect.intent.arguments + b" ")
        self.trace.append(f"a{agent} begins {key} with other arguments")
        error = self.refused(
            self._begin(agent, replica, key, effect.run, other, False),
            IntentMismatchError,
            f"{key}: Begin with other arguments",
        )
        recorded = effect_detail(error)
        self.check(recorded is not None, f"{key}: INTENT_MISMATCH without the effect")
        assert recorded is not None
        self.check_effect(recorded, effect, f"{key}: INTENT_MISMATCH's effect")
        self.note("begin: INTENT_MISMATCH")

    @rule(agent=st.integers(0, AGENTS - 1))
    def revoke(self, agent: int) -> None:
        """The agent's lease ends: what it held falls in doubt; it takes a new lease."""
        me = self.agents[agent]
        self.trace.append(f"a{agent}'s lease {me.lease.id} is revoked")
        for effect in self.held(agent):
            effect.state, effect.holder = State.IN_DOUBT, None
            me.lost[effect.key] = (effect.claim, effect.holder_lease)

        async def renew() -> Lease:
            await me.lease.revoke()
            return await me.clients[agent % 2].leases.grant(ttl=LEASE_TTL)

        me.lease = self.run(renew())

    @rule(
        agent=st.integers(0, AGENTS - 1),
        pick=st.integers(0, KEYS),
        replica=st.integers(0, 1),
        end=st.sampled_from(["complete", "abort", "revoke"]),
    )
    def wait_out(self, agent: int, pick: int, replica: int, end: str) -> None:
        """Another agent begins an effect someone holds, waiting, while the holder
        completes it (the waiter is told DONE), aborts it (PROCEED: it claims it) or
        loses its lease (IN_DOUBT)."""
        holders = [a for a in range(AGENTS) if self.held(a)]
        if not holders:
            return
        holder = holders[agent % len(holders)]
        effect = self.held(holder)[pick % len(self.held(holder))]
        waiter = (holder + 1 + pick % (AGENTS - 1)) % AGENTS

        def meanwhile() -> None:
            if end == "complete":
                self.finish(holder, effect, 1 - replica, True, True, False)
            elif end == "abort":
                self.release(holder, effect, 1 - replica)
            else:
                self.revoke(holder)

        self.begin_key(
            waiter, effect.key, effect.run, effect.intent, replica, False, False, meanwhile
        )

    @rule(pick=st.integers(0, RUNS), replica=st.integers(0, 1))
    def compensate(self, pick: int, replica: int) -> None:
        """Compensate a run (or one no effect began in: NOT_FOUND)."""
        runs = [*sorted(self.model.runs), "r-unknown"]
        run_id = runs[pick % len(runs)]
        accord = self.effects(0, replica)
        self.trace.append(f"compensate {run_id} via replica {replica}")
        if run_id not in self.model.runs:
            self.refused(accord.compensate(run_id), NotFoundError, f"{run_id}: Compensate")
            self.note("compensate: NOT_FOUND")
            return
        expected = self.model.compensations(run_id)
        if not expected:
            self.refused(
                accord.compensate(run_id), NothingToCompensateError, f"{run_id}: Compensate"
            )
            self.note("compensate: NOTHING_TO_COMPENSATE")
            return
        run = self.model.runs[run_id]
        run.status, run.compensating = RunStatus.COMPENSATING, True
        got = self.run(accord.compensate(run_id))
        listed = [
            (c.compensates, c.key, c.intent.tool, c.intent.arguments) for c in got.compensations
        ]
        wanted = [
            (e.key, compensation_key(e.key), e.compensation.tool, e.compensation.arguments)
            for e in expected
            if e.compensation is not None
        ]
        self.check(listed == wanted, f"{run_id}: compensations {listed}, expected {wanted}")
        self.note(f"compensate: {min(len(listed), 3)}{'+' if len(listed) >= 3 else ''} listed")
        for c in got.compensations:
            mine = self.model.effects.get(c.key)
            state = mine.state if mine is not None else State.ABSENT
            self.check(c.state == state, f"{c.key}: listed {c.state}, model {state.name}")
        self.check_run(got.run, run_id)

    @rule(
        agent=st.integers(0, AGENTS - 1),
        pick=st.integers(0, KEYS),
        replica=st.integers(0, 1),
        reconciled=st.booleans(),
    )
    def begin_compensation(self, agent: int, pick: int, replica: int, reconciled: bool) -> None:
        """Run a compensation of a compensating run: Begin its derived key, in its run,
        with its registered intent (then Complete, Abort... like any effect)."""
        pending = [
            e for run in self.model.runs.values() if run.compensating
            for e in self.model.compensations(run.run_id)
        ]  # fmt: skip
        if not pending:
            return
        compensated = pending[pick % len(pending)]
        assert compensated.compensation is not None
        key = compensation_key(compensated.key)
        intent = compensated.compensation
        self.begin_key(agent, key, compensated.run, intent, replica, reconciled, False)

    @rule(
        pick=st.integers(0, RUNS - 1),
        status=st.sampled_from([RunStatus.FINISHED, RunStatus.FAILED, RunStatus.RUNNING]),
    )
    def set_run_status(self, pick: int, status: RunStatus) -> None:
        if not self.model.runs:
            return
        run_id = sorted(self.model.runs)[pick % len(self.model.runs)]
        run = self.model.runs[run_id]
        if run.compensating:
            return
        self.trace.append(f"{run_id} set {status.name}")
        got = self.run(self.effects(0, 1).set_run_status(run_id, int(status)))
        run.status = status
        self.check_run(got, run_id)
        self.note(f"set run status: {status.name}")

    # --- invariants ---

    def check_effect(self, got: E.Effect, want: ModelEffect, what: str) -> None:
        """An effect as the service shows it is the model's."""
        seen = {
            "key": got.key,
            "run": got.run_id,
            "tool": got.intent.tool,
            "arguments": got.intent.arguments,
            "state": State(got.state).name,
            "attempts": got.attempts,
            "claim": got.claim,
            "claimed lease": got.claimed.lease_id,
            "began by": got.began.agent_id,
            "compensates": got.compensates,
            "began revision": got.began_revision,
        }
        expected = {
            "key": want.key,
            "run": want.run,
            "tool": want.intent.tool,
            "arguments": want.intent.arguments,
            "state": want.state.name,
            "attempts": want.attempts,
            "claim": want.claim,
            "claimed lease": want.holder_lease,
            "began by": f"a{want.began_by}",
            "compensates": want.compensates,
            "began revision": want.order[0],
        }
        if want.outcome is not None:
            which = got.outcome.WhichOneof("result")
            seen["outcome"] = (which == "success", getattr(got.outcome, which or "success"))
            expected["outcome"] = want.outcome
        if want.compensation is not None:
            seen["compensation"] = (got.compensation.tool, got.compensation.arguments)
            expected["compensation"] = (want.compensation.tool, want.compensation.arguments)
        elif want.state in FINAL:
            self.check(not got.HasField("compensation"), f"{what}: a compensation appeared")
        diff = {k: (seen[k], expected[k]) for k in expected if seen[k] != expected[k]}
        self.check(not diff, f"{what} differs from the model (seen, model): {diff}")

    def check_run(self, got: E.Run, run_id: str) -> None:
        journal = self.model.journal(run_id)
        counts = {
            "effects": len(journal),
            "running": sum(e.state is State.RUNNING for e in journal),
            "in_doubt": sum(e.state is State.IN_DOUBT for e in journal),
            "succeeded": sum(e.state is State.SUCCEEDED for e in journal),
            "failed": sum(e.state is State.FAILED for e in journal),
            "compensations": len(self.model.compensations(run_id)),
            "compensated": sum(
                (c := self.model.effects.get(compensation_key(e.key))) is not None
                and c.state in FINAL
                for e in self.model.compensations(run_id)
            ),
        }
        seen = {name: getattr(got, name) for name in counts}
        expected: dict[str, object] = dict(counts)
        seen["status"] = RunStatus(got.status).name
        expected["status"] = self.model.run_status(run_id).name
        if seen["status"] == "COMPENSATED":
            self.note("run: COMPENSATED")
        seen["resume_at"] = got.resume_at
        expected["resume_at"] = self.model.resume_at(run_id)
        diff = {k: (seen[k], expected[k]) for k in expected if seen[k] != expected[k]}
        self.check(not diff, f"run {run_id} differs from the model (seen, model): {diff}")

    @invariant()
    def service_is_the_model(self) -> None:
        """3 and 4: every effect (Get) and every run (GetRun, its whole journal) read
        back through a replica are the model's; and List, in small pages, of the effects
        in one state (in key order) and of one run's (in journal order), a state and a
        run in turn."""
        if not self.agents:
            return
        turn = len(self.trace)
        state = [s for s in State if s is not State.ABSENT][turn % 5]
        listed_run = sorted(self.model.runs)[turn % len(self.model.runs)] if self.model.runs else ""

        async def listing(accord: Any, **which: Any) -> list[str]:
            keys: list[str] = []
            token = ""
            while True:
                page = await accord.list(limit=LIST_PAGE, page_token=token, **which)
                keys += [e.key for e in page.effects]
                token = page.next_page_token
                if not token:
                    return keys

        async def read() -> tuple[dict[str, E.Effect | None], dict[str, Any], list[list[str]]]:
            accord = self.effects(1, turn % 2)
            effects = {k: await accord.get(k) for k in sorted(self.model.effects)}
            runs = {r: await accord.get_run(r, limit=100) for r in sorted(self.model.runs)}
            listed = [await listing(accord, states=[int(state)])]
            if listed_run:
                listed.append(await listing(accord, run_id=listed_run))
            return effects, runs, listed

        effects, runs, listed = self.run(read())
        in_state = sorted(k for k, e in self.model.effects.items() if e.state is state)
        self.check(listed[0] == in_state, f"List of {state.name}: {listed[0]}, model {in_state}")
        if listed_run:
            wanted = [e.key for e in self.model.journal(listed_run)]
            self.check(listed[1] == wanted, f"List of {listed_run}: {listed[1]}, model {wanted}")
        for key, got in effects.items():
            self.check(got is not None, f"{key}: Get found nothing")
            assert got is not None
            self.check_effect(got, self.model.effects[key], f"{key}: Get")
        for run_id, got in runs.items():
            self.check_run(got.run, run_id)
            order = [e.key for e in got.journal]
            wanted = [e.key for e in self.model.journal(run_id)]
            self.check(order == wanted, f"run {run_id}: journal {order}, model {wanted}")
            for e in got.journal:
                self.check_effect(e, self.model.effects[e.key], f"{e.key} in {run_id}'s journal")


# A known walk first, every run: every Begin answer, a zombie refused, a Complete
# replayed, a race, both refusals of Compensate, and a run compensated to the end.
# (rule, arguments); picks index what the rule chooses among, as the rules read them.
WALK: list[tuple[str, dict[str, Any]]] = [
    ("begin", {"agent": 0, "pick": 0, "replica": 0}),  # a0 claims k0
    ("begin", {"agent": 0, "pick": 0, "replica": 1}),  # retried: the same claim
    ("begin", {"agent": 1, "pick": 0, "replica": 1}),  # BUSY
    ("revoke", {"agent": 0}),  # k0 in doubt
    ("begin", {"agent": 1, "pick": 0, "replica": 0}),  # IN_DOUBT
    ("zombie_complete", {"agent": 0, "pick": 0, "replica": 1}),  # a0's lapsed claim: NOT_HELD
    ("begin", {"agent": 1, "pick": 0, "replica": 1, "reconciled": True, "reword": True}),
    ("zombie_complete", {"agent": 0, "pick": 0, "replica": 0}),  # claimed again: NOT_HELD
    ("complete", {"agent": 0, "pick": 0, "replica": 0, "register": True, "twice": True}),
    ("begin", {"agent": 2, "pick": 0, "replica": 1}),  # DONE
    ("zombie_complete", {"agent": 0, "pick": 0, "replica": 1}),  # k0 is done: replayed
    ("zombie_complete", {"agent": 0, "pick": 0, "replica": 0, "abort": True}),
    ("race", {"agents": (0, 2), "pick": 2}),  # k2
    ("abort", {"agent": 0, "pick": 0, "replica": 1}),
    ("begin", {"agent": 1, "pick": 2, "replica": 0}),  # PROCEED after the abort
    ("zombie_complete", {"agent": 1, "pick": 1, "replica": 1, "abort": True}),  # k2: NOT_HELD
    ("complete", {"agent": 0, "pick": 0, "replica": 1, "register": True}),
    ("misbegin", {"agent": 2, "pick": 0, "replica": 0}),  # k0
    ("misbegin", {"agent": 2, "pick": 1, "replica": 1, "other_run": True}),  # k2
    ("compensate", {"pick": 1, "replica": 0}),  # a run nothing began in: NOT_FOUND
    ("begin", {"agent": 2, "pick": 1, "replica": 0}),  # k1, in r1
    ("begin", {"agent": 0, "pick": 3, "replica": 1}),  # k3 too: r1 resumes at k1
    ("complete", {"agent": 1, "pick": 0, "replica": 0, "success": False}),  # a2's k1
    ("compensate", {"pick": 1, "replica": 1}),  # NOTHING_TO_COMPENSATE
    ("set_run_status", {"pick": 1, "status": RunStatus.FINISHED}),
    ("compensate", {"pick": 0, "replica": 0}),  # r0: k2's, then k0's
    ("begin_compensation", {"agent": 0, "pick": 0, "replica": 0}),
    ("complete", {"agent": 0, "pick": 0, "replica": 1, "register": True}),
    ("compensate", {"pick": 0, "replica": 1}),  # again: the same list, one done
    ("begin_compensation", {"agent": 1, "pick": 1, "replica": 1}),
    ("complete", {"agent": 1, "pick": 0, "replica": 0, "success": False}),  # COMPENSATED
    ("set_run_status", {"pick": 1, "status": RunStatus.RUNNING}),
    # Begins that wait on a holder (a0 holds k3): a1 waits while a0 aborts (a1 claims
    # it), a2 while a1's lease is revoked (in doubt), a0 while a2, having reconciled,
    # completes it (done).
    ("wait_out", {"agent": 0, "pick": 0, "replica": 0, "end": "abort"}),
    ("wait_out", {"agent": 0, "pick": 0, "replica": 1, "end": "revoke"}),
    ("begin", {"agent": 2, "pick": 3, "replica": 0, "reconciled": True}),
    ("wait_out", {"agent": 0, "pick": 0, "replica": 0, "end": "complete"}),
]
WALK_DEFAULTS = {
    "reconciled": False,
    "reword": False,
    "success": True,
    "register": False,
    "twice": False,
    "abort": False,
    "other_run": False,
}
WALK_COVERS = {
    "begin: PROCEED (new)",
    "begin: PROCEED, retried",
    "begin: BUSY",
    "begin: IN_DOUBT",
    "begin: PROCEED, IN_DOUBT",
    "begin: PROCEED, ABORTED",
    "begin: DONE",
    "begin: INTENT_MISMATCH",
    "begin: INVALID_ARGUMENT (another run)",
    "race: one PROCEED, one BUSY",
    "complete: replayed",
    "abort",
    "zombie complete: NOT_HELD, the effect RUNNING",
    "zombie complete: NOT_HELD, the effect IN_DOUBT",
    "zombie complete: replayed, the effect SUCCEEDED",
    "zombie abort: CONDITION_FAILED, the effect SUCCEEDED",
    "zombie abort: NOT_HELD, the effect RUNNING",
    "compensate: NOT_FOUND",
    "compensate: NOTHING_TO_COMPENSATE",
    "compensate: 2 listed",
    "run: COMPENSATED",
    "set run status: FINISHED",
    "begin, waiting: PROCEED",
    "begin, waiting: IN_DOUBT",
    "begin, waiting: DONE",
}


def machine_for(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> type[EffectsMachine]:
    class Machine(EffectsMachine):
        pass

    Machine.addresses = [r.address for r in replicas]
    Machine.etcd = etcd
    Machine.namespace_prefix = namespace
    Machine.seen = Counter()
    return Machine


def test_effects_walk_the_known_path(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    machine = machine_for(replicas, etcd, namespace)()
    try:
        machine.start()
        for name, arguments in WALK:
            step = getattr(machine, name)
            wanted = step.__code__.co_varnames[1 : step.__code__.co_argcount]
            step(**{k: v for k, v in WALK_DEFAULTS.items() if k in wanted} | arguments)
            machine.service_is_the_model()
    finally:
        machine.teardown()
    missing = WALK_COVERS - set(machine.seen)
    assert not missing, f"the walk no longer shows {missing}; it showed {dict(machine.seen)}"


def test_effects_begun_together(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    """Effects of one run begun at once, which group commit writes in one transaction
    (sharing a revision), then completed in journal order, each with a compensation:
    after each, the journal, the counts and resume_at (the least key among the first
    open effects) are the model's; Compensate lists every compensation, newest first (a
    compensation registered under the revision alone was overwritten by the next one of
    its transaction, and Compensate lost it)."""
    machine = machine_for(replicas, etcd, namespace)()
    try:
        machine.start()
        # The run exists first: Begins that find it write nothing of it, so group commit
        # may put them in one transaction. Up to three tries to see that happen.
        machine.begin_key(0, "a", "r0", machine.intent_of("a"), 0, False, False)
        machine.complete(0, 0, 0, success=True, register=True, twice=False)
        for attempt in range(3):
            keys = [f"b{attempt}-{i:02}" for i in range(TOGETHER)]
            machine.begin_all(0, keys, "r0", replica=0)
            machine.service_is_the_model()
            if machine.seen["begun together, sharing a revision"]:
                break
        for effect in machine.model.journal("r0"):
            if effect.state is State.RUNNING:
                assert effect.holder is not None
                machine.finish(effect.holder, effect, 1, True, True, False)
                machine.service_is_the_model()
        machine.compensate(pick=0, replica=1)
        machine.service_is_the_model()
    finally:
        machine.teardown()
    assert machine.seen["begun together, sharing a revision"], dict(machine.seen)


@pytest.mark.timeout(300)
def test_effects_follow_the_model(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    machine = machine_for(replicas, etcd, namespace)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=40,
            deadline=None,
            # Each example drives live processes: no shrinking (a failure prints its steps).
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    print("what the examples did:", dict(sorted(machine.seen.items())))
