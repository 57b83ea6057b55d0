"""Beginning effects, and reading one: Begin's four answers and Get.

Every Begin that writes is one etcd transaction whose compares decide it, whichever
replica sends it, so two Begins racing through two replicas get exactly one PROCEED:
- a new key: the record is absent (and so is its claim); it writes the record
  (RUNNING), the claim on the caller's lease, the run's journal entry and open marker,
  and the run's record when the run is new;
- a claim again (ABORTED, or IN_DOUBT with reconciled): the record is unchanged since it
  was read and has no claim; it writes the record and a new claim, whose token (the
  revision of that write) is higher than every earlier one.
A write whose compares failed is decided again from a fresh read. Claims hang on the
executor's lease, so etcd deletes a claim when its executor's lease ends, which is what
makes an effect IN_DOUBT (records.py). Ending a claim is outcomes.py.

A BUSY Begin with wait_ms waits on the watch hub for the record or the claim to change
(bounded by wait_ms, 60 s and the call's deadline), then answers as a fresh Begin would.

Cost: one read-only etcd transaction (the caller's lease record, the effect's record, its
claim, the run's record, a count of its journal, the compensation registered under the
key) (+ the fence's read); a Begin that claims adds one write, batched by group commit.

Error handling: bad input is INVALID_ARGUMENT before anything is read; the caller's
lease must exist in the namespace (LEASE_NOT_FOUND) and be its own (PERMISSION_DENIED,
leases/store.py); Begin of a key recorded with another tool or arguments is
INTENT_MISMATCH with the recorded Effect (a compensation's key begun with another intent
than the registered one: INTENT_MISMATCH too), and naming another run INVALID_ARGUMENT; a
new effect in a run holding --effects-max-per-run is QUOTA_EXCEEDED, and so is one in a
namespace holding its effects quota (quotas/admission.py); a lost fence is
FENCED; Get of an unknown key is NOT_FOUND. Refusals write nothing. A Begin that claims
makes its run's record again if it expired before the run's effects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from accord.coordinator.effects import records
from accord.coordinator.effects.ledger import ATTEMPTS, Ledger, keep_run, not_found
from accord.coordinator.effects.records import (
    ABORTED,
    ABORTED_MARK,
    FINAL,
    IN_DOUBT,
    OPEN,
    RUNNING,
    actor,
    effect_of,
    stored,
)
from accord.coordinator.leases.store import check_owner, lease_of
from accord.coordinator.locks.fencing import FenceGuard, Fencing
from accord.coordinator.observability import accord_metrics
from accord.coordinator.quotas.admission import Admission
from accord.coordinator.quotas.limits import Limit
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    BackendUnavailable,
    FieldViolation,
    IntentMismatch,
    QuotaExceeded,
    invalid,
    require,
)
from accord.coordinator.substrate.txn import (
    KeyValue,
    Txn,
    absent,
    count,
    delete,
    first_kv,
    get,
    mod_is,
    put,
    read,
    txn,
    watch,
)
from accord.v1 import common_pb2, effects_pb2

MAX_WAIT_SECONDS = 60.0
# A full run frees room only when its effects expire: the RetryInfo a refusal carries.
RUN_FULL_RETRY_SECONDS = 30.0
# A wait ends this long before the call's deadline, so the answer still reaches the caller.
DEADLINE_MARGIN_SECONDS = 0.25

PROCEED = effects_pb2.BEGIN_OUTCOME_PROCEED
DONE = effects_pb2.BEGIN_OUTCOME_DONE
IN_DOUBT_OUTCOME = effects_pb2.BEGIN_OUTCOME_IN_DOUBT
BUSY = effects_pb2.BEGIN_OUTCOME_BUSY
_OUTCOME_WORDS = {PROCEED: "proceed", DONE: "done", IN_DOUBT_OUTCOME: "in_doubt", BUSY: "busy"}


@dataclass(frozen=True, slots=True)
class Began:
    revision: int
    outcome: effects_pb2.BeginOutcome.ValueType
    effect: effects_pb2.Effect


@dataclass(frozen=True, slots=True)
class _Seen:
    """What Begin read in one etcd transaction."""

    revision: int
    record: KeyValue | None
    claim: KeyValue | None
    run: KeyValue | None
    journal: int  # the run's effects
    registered: effects_pb2.Compensation | None  # when key is a registered compensation's


class EffectStore:
    def __init__(
        self, ledger: Ledger, fencing: Fencing, admission: Admission | None = None
    ) -> None:
        """admission: where a new record is checked against the namespace's effects
        quota (None: quotas off)."""
        self._l = ledger
        self._s = ledger.s
        self._fencing = fencing
        self._admission = admission

    # --- begin ----------------------------------------------------------------------

    async def begin(
        self,
        key: str,
        run_id: str,
        intent: effects_pb2.Intent,
        lease_id: int,
        *,
        fence: common_pb2.Fence | None,
        wait_ms: int,
        reconciled: bool,
    ) -> Began:
        violations = records.check_name("key", key) + records.check_name("run_id", run_id)
        violations += records.check_intent("intent", intent, self._l.limits)
        if lease_id <= 0:
            violations.append(FieldViolation("lease_id", "must be the caller's lease (> 0)"))
        if wait_ms < 0:
            violations.append(FieldViolation("wait_ms", "must not be negative"))
        require(violations)
        ns = calls.current.get().namespace
        until = _wait_until(wait_ms)
        for _ in range(ATTEMPTS):
            seen = await self._look(key, run_id, lease_id)
            answer = await self._decide(key, run_id, intent, lease_id, fence, reconciled, seen)
            if answer is None:  # a compare failed: someone else wrote first; look again
                continue
            if answer.outcome == BUSY and time.monotonic() < until:
                await self._wait(key, run_id, seen.revision, until)
                continue
            accord_metrics.effect_began(ns, _OUTCOME_WORDS[answer.outcome])
            return answer
        raise BackendUnavailable(f"effect {key!r} kept changing while being begun; try again")

    async def _look(self, key: str, run_id: str, lease_id: int) -> _Seen:
        """Read what Begin decides from, in one etcd transaction; refuse a lease that does
        not exist in the namespace or is another principal's (leases/store.py)."""
        run = self._l.run(run_id)
        ns = calls.current.get().namespace
        found = await self._s.etcd.txn(
            txn(
                then=[
                    get(self._s.keys.lease(ns, lease_id)),
                    get(self._l.effect(key)),
                    get(run.claim(key)),
                    get(run.record),
                    count(run.journal(), prefix=True),
                    get(run.compensation_key(key)),
                ]
            ),
            retry=True,
        )
        lease, record, claim, run_record, journal, registered = found.responses
        check_owner(lease_of(lease_id, first_kv(lease)))
        reg = first_kv(registered)
        return _Seen(
            int(found.header.revision),
            first_kv(record),
            first_kv(claim),
            first_kv(run_record),
            int(journal.response_range.count),
            effects_pb2.Compensation.FromString(reg.value) if reg is not None else None,
        )

    async def _decide(
        self,
        key: str,
        run_id: str,
        intent: effects_pb2.Intent,
        lease_id: int,
        fence: common_pb2.Fence | None,
        reconciled: bool,
        seen: _Seen,
    ) -> Began | None:
        """The answer to a Begin given what was read, writing a claim when it is the
        caller's to take; None when the write's compares failed."""
        if seen.record is None:
            return await self._create(key, run_id, intent, lease_id, fence, seen)
        effect = effect_of(seen.record, seen.claim)
        if effect.run_id != run_id:
            raise invalid(
                "run_id",
                f"effect {key!r} belongs to run {effect.run_id!r}; an effect keeps its run",
            )
        if records.intent_digest(effect.intent) != records.intent_digest(intent):
            raise IntentMismatch(
                f"effect {key!r} was begun with another tool call (tool "
                f"{effect.intent.tool!r}, {len(effect.intent.arguments)} bytes of arguments): "
                "a key names one tool call; derive a new key for a different call",
                details=[effect],
                metadata={"key": key, "tool": effect.intent.tool},
            )
        if effect.state in FINAL:
            return Began(seen.revision, DONE, effect)
        if effect.state == RUNNING:
            assert seen.claim is not None
            if seen.claim.lease != lease_id:
                return Began(seen.revision, BUSY, effect)
            await self._fencing.guard([fence] if fence is not None else [], field="fence")
            return Began(seen.revision, PROCEED, effect)  # a retried Begin: the same claim
        if effect.state == IN_DOUBT and not reconciled:
            return Began(seen.revision, IN_DOUBT_OUTCOME, effect)
        return await self._claim(effect, seen, lease_id, fence)

    async def _create(
        self,
        key: str,
        run_id: str,
        intent: effects_pb2.Intent,
        lease_id: int,
        fence: common_pb2.Fence | None,
        seen: _Seen,
    ) -> Began | None:
        if seen.journal >= self._l.max_per_run:
            raise QuotaExceeded(
                f"run {run_id!r} holds {seen.journal} effects, the most a run may hold "
                f"(--effects-max-per-run {self._l.max_per_run}); nothing was written",
                subject=f"run:{calls.current.get().namespace}/{run_id}",
                limit="effects_max_per_run",
                retry_after=RUN_FULL_RETRY_SECONDS,
            )
        if self._admission is not None:
            self._admission.admit_new(calls.current.get().namespace, Limit.EFFECTS)
        guard = await self._fencing.guard([fence] if fence is not None else [], field="fence")
        who = actor(lease_id)
        effect = effects_pb2.Effect(
            key=key,
            run_id=run_id,
            intent=intent,
            state=RUNNING,
            began=who,
            claimed=who,
            attempts=1,
        )
        if seen.registered is not None:
            registered = seen.registered
            if records.intent_digest(registered.intent) != records.intent_digest(intent):
                raise IntentMismatch(
                    f"key {key!r} runs the compensation of effect {registered.compensates!r}, "
                    f"registered as tool {registered.intent.tool!r} with other arguments: "
                    "begin it with the intent Compensate listed",
                    metadata={"key": key, "tool": registered.intent.tool},
                )
            effect.compensates = registered.compensates
        run = self._l.run(run_id)
        record = self._l.effect(key)

        def build(retention: int) -> Txn:
            when = [absent(record), absent(run.claim(key)), *guard.compares]
            then = [
                put(record, stored(effect), lease=retention),
                put(run.claim(key), b"", lease=lease_id),  # gone when the lease ends
                put(run.journal(key), b"", lease=retention),  # its place: create_revision
                put(run.marker(OPEN, key), b"", lease=retention),
            ]
            keep_run(seen.run, run, run_id, who, retention, when, then)
            return txn(when=when, then=then, otherwise=guard.reads)

        return await self._claimed(build, effect, guard)

    async def _claim(
        self,
        effect: effects_pb2.Effect,
        seen: _Seen,
        lease_id: int,
        fence: common_pb2.Fence | None,
    ) -> Began | None:
        """Claim an ABORTED or reconciled IN_DOUBT effect for the caller."""
        assert seen.record is not None
        guard = await self._fencing.guard([fence] if fence is not None else [], field="fence")
        was_aborted = effect.state == ABORTED
        effect.state = RUNNING
        effect.claimed.CopyFrom(actor(lease_id))
        effect.attempts += 1
        run = self._l.run(effect.run_id)
        record = self._l.effect(effect.key)
        mod = seen.record.mod_revision

        def build(retention: int) -> Txn:
            when = [mod_is(record, mod), absent(run.claim(effect.key)), *guard.compares]
            then = [
                put(record, stored(effect), lease=retention),
                put(run.claim(effect.key), b"", lease=lease_id),
                put(run.journal(effect.key), b"", lease=retention),
                put(run.marker(OPEN, effect.key), b"", lease=retention),
            ]
            if was_aborted:
                then.append(delete(run.marker(ABORTED_MARK, effect.key)))
            keep_run(seen.run, run, effect.run_id, effect.claimed, retention, when, then)
            return txn(when=when, then=then, otherwise=guard.reads)

        return await self._claimed(build, effect, guard)

    async def _claimed(
        self, build: Callable[[int], Txn], effect: effects_pb2.Effect, guard: FenceGuard
    ) -> Began | None:
        committed = await self._l.writes.commit(build, retained=True)
        if not committed.response.succeeded:
            broken = guard.broken(committed.response.responses)
            if broken is not None:
                raise await self._fencing.fenced(broken)
            return None
        effect.claim = committed.revision
        if not effect.began_revision:
            effect.began_revision = committed.revision
        return Began(committed.revision, PROCEED, effect)

    async def _wait(self, key: str, run_id: str, after: int, until: float) -> None:
        """Until the record or the claim changes after revision `after`, or until."""
        run = self._l.run(run_id)
        await self._s.etcd.watch_hub.first_change(
            [
                watch(self._l.effect(key), start_revision=after + 1),
                watch(run.claim(key), start_revision=after + 1),
            ],
            max(0.0, until - time.monotonic()),
        )

    # --- get --------------------------------------------------------------------------

    async def get(self, key: str) -> tuple[int, effects_pb2.Effect]:
        require(records.check_name("key", key))
        found = await self._s.etcd.range(read(self._l.effect(key)))
        if not found.kvs:
            raise not_found(key)
        return int(found.header.revision), await self._l.current(found.kvs[0])


def _wait_until(wait_ms: int) -> float:
    """When a BUSY Begin stops waiting (monotonic time): wait_ms, at most 60 s, and before
    the call's deadline."""
    now = time.monotonic()
    until = now + min(wait_ms / 1000, MAX_WAIT_SECONDS)
    left = calls.current.get().remaining()
    if left is not None:
        until = min(until, now + left - DEADLINE_MARGIN_SECONDS)
    return until
