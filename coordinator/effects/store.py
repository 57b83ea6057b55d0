"""The effect ledger's writes: Begin, Complete and Abort, and Get.

Every write is one etcd transaction whose compares decide it, whichever replica sends
it, so two Begins racing through two replicas get exactly one PROCEED:
- Begin of a new key: the record is absent (and so is its claim); it writes the record
  (RUNNING), the claim on the caller's lease, the run's journal entry and open marker,
  and the run's record when the run is new.
- Begin that claims again (ABORTED, or IN_DOUBT with reconciled): the record is unchanged
  since it was read and has no claim; it writes the record and a new claim (its token,
  the revision of that write, is higher than every earlier one).
- Complete and Abort: the record is still at the caller's claim (a RUNNING record's
  mod_revision is its claim's token), the claim key exists, was created at that token and
  hangs on the caller's lease; with a fence, the lock grant holds (locks/fencing.py). So
  an executor whose lease ended, or whose effect was claimed again since, writes nothing.
Effects, journals, markers and runs hang on the effects retention lease (--effects-ttl),
re-attached by each write of theirs; claims hang on the executor's lease, so etcd
deletes a claim when its executor's lease ends, which is what makes an effect IN_DOUBT.

A BUSY Begin with wait_ms waits on the watch hub for the record or the claim to change
(bounded by wait_ms, 60 s and the call's deadline), then answers as a fresh Begin would.

Error handling: bad input is INVALID_ARGUMENT before anything is read; the caller's
lease must exist in the namespace (LEASE_NOT_FOUND) and be its own (PERMISSION_DENIED,
leases/store.py); Begin of a key recorded with another tool or arguments is
INTENT_MISMATCH with the recorded Effect; a run over --effects-max-per-run is
QUOTA_EXCEEDED; Complete or Abort without the claim is NOT_HELD with the current Effect
(its `claimed` says who holds it now); a lost fence is FENCED; Abort of a finished effect
is CONDITION_FAILED with the Effect; an unknown key is NOT_FOUND. Refusals write nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from accord.coordinator.effects import records
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
from accord.coordinator.leases.store import LeaseStore
from accord.coordinator.locks.fencing import FenceGuard, Fencing
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import (
    BackendUnavailable,
    ConditionFailed,
    FieldViolation,
    IntentMismatch,
    NotFound,
    NotHeld,
    QuotaExceeded,
    invalid,
    require,
)
from accord.coordinator.substrate.idempotency import Writes
from accord.coordinator.substrate.keyspace import RunKeys
from accord.coordinator.substrate.limits import Limits
from accord.coordinator.substrate.retention import RetentionLeases
from accord.coordinator.substrate.txn import (
    KeyValue,
    Op,
    Txn,
    absent,
    count,
    created_at,
    delete,
    exists,
    first_kv,
    get,
    lease_is,
    mod_is,
    put,
    read,
    reattach,
    txn,
    watch,
)
from accord.v1 import common_pb2, effects_pb2

# A write whose compares failed is decided again from a fresh read; a key that changes
# this often under one call is contended beyond reason.
ATTEMPTS = 16
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
class Ledger:
    """What the effects modules share: the substrate, the writes on the effects retention
    lease, and the configured bounds."""

    s: Substrate
    writes: Writes  # commits on the effects retention lease
    max_per_run: int

    @classmethod
    def over(cls, substrate: Substrate, *, ttl: int, max_per_run: int) -> Ledger:
        retention = RetentionLeases(substrate.etcd, ttl=ttl, rotate_every=max(1, ttl // 24))
        writes = Writes(substrate.etcd, substrate.keys, substrate.committer, retention)
        return cls(substrate, writes, max_per_run)

    @property
    def limits(self) -> Limits:
        return self.s.limits

    def run(self, run_id: str) -> RunKeys:
        return self.s.keys.run(calls.current.get().namespace, run_id)

    def effect(self, key: str) -> bytes:
        return self.s.keys.effect(calls.current.get().namespace, key)


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


def not_found(key: str) -> NotFound:
    ns = calls.current.get().namespace
    return NotFound(
        f"effect {key!r} does not exist in namespace {ns!r} (never begun, or deleted after "
        "its retention)",
        metadata={"key": key},
    )


def not_held(effect: effects_pb2.Effect, claim: int, lease_id: int) -> NotHeld:
    state = records.state_name(effect.state)
    if effect.state == RUNNING:
        now = (
            f"it is claimed by agent {effect.claimed.agent_id!r} (lease {effect.claimed.lease_id},"
            f" claim {effect.claim})"
        )
    else:
        now = f"it is {state} (last claim {effect.claim})"
    return NotHeld(
        f"claim {claim} on lease {lease_id} does not hold effect {effect.key!r}: {now}; "
        "nothing was written (Begin it again to learn what to do)",
        details=[effect],
        metadata={"key": effect.key, "state": state, "claim": str(effect.claim)},
    )


class EffectStore:
    def __init__(self, ledger: Ledger, leases: LeaseStore, fencing: Fencing) -> None:
        self._l = ledger
        self._s = ledger.s
        self._leases = leases
        self._fencing = fencing

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
        await self._leases.owned(lease_id)
        ns = calls.current.get().namespace
        until = _wait_until(wait_ms)
        for _ in range(ATTEMPTS):
            seen = await self._look(key, run_id)
            answer = await self._decide(key, run_id, intent, lease_id, fence, reconciled, seen)
            if answer is None:  # a compare failed: someone else wrote first; look again
                continue
            if answer.outcome == BUSY and time.monotonic() < until:
                await self._wait(key, run_id, seen.revision, until)
                continue
            accord_metrics.effect_began(ns, _OUTCOME_WORDS[answer.outcome])
            return answer
        raise BackendUnavailable(f"effect {key!r} kept changing while being begun; try again")

    async def _look(self, key: str, run_id: str) -> _Seen:
        run = self._l.run(run_id)
        found = await self._s.etcd.txn(
            txn(
                then=[
                    get(self._l.effect(key)),
                    get(run.claim(key)),
                    get(run.record),
                    count(run.journal(), prefix=True),
                    get(run.compensation_key(key)),
                ]
            ),
            retry=True,
        )
        record, claim, run_record, journal, registered = found.responses
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
            effect.compensates = seen.registered.compensates
        run = self._l.run(run_id)
        record = self._l.effect(key)
        new_run = (
            effects_pb2.Run(
                run_id=run_id, status=effects_pb2.RUN_STATUS_RUNNING, created=who, updated=who
            ).SerializeToString()
            if seen.run is None
            else b""
        )

        def build(retention: int) -> Txn:
            when = [absent(record), absent(run.claim(key)), *guard.compares]
            then = [
                put(record, stored(effect), lease=retention),
                put(run.claim(key), b"", lease=lease_id),  # gone when the lease ends
                put(run.journal(key), b"", lease=retention),  # its place: create_revision
                put(run.marker(OPEN, key), b"", lease=retention),
            ]
            if seen.run is None:
                when.append(absent(run.record))
                then.append(put(run.record, new_run, lease=retention))
            else:
                _keep_run(seen.run, run, retention, when, then)
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
            if seen.run is not None:
                _keep_run(seen.run, run, retention, when, then)
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

    # --- complete and abort -----------------------------------------------------------

    async def complete(
        self,
        key: str,
        claim: int,
        lease_id: int,
        outcome: effects_pb2.EffectOutcome,
        compensation: effects_pb2.Intent | None,
        fence: common_pb2.Fence | None,
    ) -> tuple[int, effects_pb2.Effect, bool]:
        """(revision, the effect, replayed): the outcome recorded, or the first one."""
        limits = self._l.limits
        violations = _check_claim(key, claim, lease_id)
        kind = outcome.WhichOneof("result")
        if kind is None:
            violations.append(FieldViolation("outcome", "set success or failure"))
        elif kind == "success":
            violations += records.check_value("outcome.success", outcome.success, limits)
        else:
            violations += records.check_failure("outcome.failure", outcome.failure, limits)
        if compensation is not None:
            violations += records.check_intent("compensation", compensation, limits)
        require(violations)
        await self._leases.check_owned(lease_id)
        ns = calls.current.get().namespace
        state = records.SUCCEEDED if kind == "success" else records.FAILED
        for _ in range(ATTEMPTS):
            found = await self._s.etcd.range(read(self._l.effect(key)))
            if not found.kvs:
                raise not_found(key)
            raw = found.kvs[0]
            effect = effect_of(raw, None, claim_read=False)
            if effect.state in FINAL:
                return int(found.header.revision), effect, True
            if effect.state != RUNNING or raw.mod_revision != claim:
                raise not_held(await self._current(raw), claim, lease_id)
            guard = await self._fencing.guard([fence] if fence is not None else [], field="fence")
            done = effects_pb2.Effect()
            done.CopyFrom(effect)
            done.state = state
            done.outcome.CopyFrom(outcome)
            done.completed.CopyFrom(actor(lease_id))
            if compensation is not None:
                done.compensation.CopyFrom(compensation)
            size = len(stored(done))
            if size > limits.max_txn_bytes:
                raise invalid(
                    "outcome",
                    f"the effect with this outcome would be {size} bytes; the limit is "
                    f"{limits.max_txn_bytes} (arguments, result and compensation together)",
                )
            build = self._finish(done, raw, claim, lease_id, guard)
            committed = await self._l.writes.commit(build, retained=True)
            if committed.response.succeeded:
                accord_metrics.effect_completed(ns, "succeeded" if kind == "success" else "failed")
                return committed.revision, done, False
            await self._refused(committed.response, guard, claim, lease_id)
        raise BackendUnavailable(f"effect {key!r} kept changing while being completed")

    def _finish(
        self,
        done: effects_pb2.Effect,
        raw: KeyValue,
        claim: int,
        lease_id: int,
        guard: FenceGuard,
    ) -> Callable[[int], Txn]:
        """The write of a final outcome (or of an abort) while the claim holds."""
        key = done.key
        run = self._l.run(done.run_id)
        record = self._l.effect(key)
        done.claim = claim
        value = stored(done)

        def build(retention: int) -> Txn:
            then: list[Op] = [
                put(record, value, lease=retention),
                delete(run.claim(key)),
                put(run.journal(key), b"", lease=retention),
            ]
            if done.state in FINAL:
                then += [
                    delete(run.marker(OPEN, key)),
                    put(run.marker(records.marker_of(done.state), key), b"", lease=retention),
                ]
                if done.HasField("compensation"):
                    registered = effects_pb2.Compensation(
                        compensates=key,
                        intent=done.compensation,
                        key=records.compensation_key(key),
                    ).SerializeToString()
                    then += [
                        put(run.compensation(raw.create_revision), registered, lease=retention),
                        put(
                            run.compensation_key(records.compensation_key(key)),
                            registered,
                            lease=retention,
                        ),
                    ]
                if done.compensates:
                    then.append(put(run.compensated(key), b"", lease=retention))
            else:
                then += [
                    put(run.marker(OPEN, key), b"", lease=retention),
                    put(run.marker(ABORTED_MARK, key), b"", lease=retention),
                ]
            return txn(
                when=[
                    mod_is(record, claim),  # still RUNNING at this claim
                    created_at(run.claim(key), claim),  # the claim key of that claim...
                    lease_is(run.claim(key), lease_id),  # ...on the caller's lease
                    *guard.compares,
                ],
                then=then,
                otherwise=[*guard.reads, get(record), get(run.claim(key))],
            )

        return build

    async def _refused(
        self, response: object, guard: FenceGuard, claim: int, lease_id: int
    ) -> None:
        """Why a Complete or Abort did not apply, raised: a lost fence, or a claim that
        does not hold (the record still at the claim, its claim key gone or another
        lease's). Returns when the record changed meanwhile: the caller looks again."""
        read_back = response.responses  # type: ignore[attr-defined]
        broken = guard.broken(read_back)
        if broken is not None:
            raise await self._fencing.fenced(broken)
        record, claim_kv = (first_kv(r) for r in read_back[len(guard.reads) :])
        if record is not None and record.mod_revision == claim:
            raise not_held(effect_of(record, claim_kv), claim, lease_id)

    async def abort(
        self, key: str, claim: int, lease_id: int, reason: str
    ) -> tuple[int, effects_pb2.Effect]:
        violations = _check_claim(key, claim, lease_id) + records.check_text("reason", reason)
        require(violations)
        await self._leases.check_owned(lease_id)
        ns = calls.current.get().namespace
        for _ in range(ATTEMPTS):
            found = await self._s.etcd.range(read(self._l.effect(key)))
            if not found.kvs:
                raise not_found(key)
            raw = found.kvs[0]
            effect = effect_of(raw, None, claim_read=False)
            if effect.state in FINAL:
                raise ConditionFailed(
                    f"effect {key!r} is already {records.state_name(effect.state)}: it has an "
                    "outcome, which stands; there is no claim to release",
                    details=[effect],
                    metadata={"key": key, "state": records.state_name(effect.state)},
                )
            if effect.state == ABORTED and effect.claim == claim:
                return int(found.header.revision), effect  # aborted by this claim already
            if effect.state != RUNNING or raw.mod_revision != claim:
                raise not_held(await self._current(raw), claim, lease_id)
            done = effects_pb2.Effect()
            done.CopyFrom(effect)
            done.state = ABORTED
            done.completed.CopyFrom(actor(lease_id))
            done.abort_reason = reason
            build = self._finish(done, raw, claim, lease_id, FenceGuard())
            committed = await self._l.writes.commit(build, retained=True)
            if committed.response.succeeded:
                accord_metrics.effect_aborted(ns)
                return committed.revision, done
            await self._refused(committed.response, FenceGuard(), claim, lease_id)
        raise BackendUnavailable(f"effect {key!r} kept changing while being aborted")

    # --- get --------------------------------------------------------------------------

    async def get(self, key: str) -> tuple[int, effects_pb2.Effect]:
        require(records.check_name("key", key))
        found = await self._s.etcd.range(read(self._l.effect(key)))
        if not found.kvs:
            raise not_found(key)
        return int(found.header.revision), await self._current(found.kvs[0])

    async def _current(self, raw: KeyValue) -> effects_pb2.Effect:
        """The effect of a record, its claim read when it says RUNNING."""
        effect = effect_of(raw, None, claim_read=False)
        if effect.state != RUNNING:
            return effect
        claim = await self._s.etcd.range(read(self._l.run(effect.run_id).claim(effect.key)))
        return effect_of(raw, claim.kvs[0] if claim.kvs else None)


def _keep_run(
    raw: KeyValue, run: RunKeys, retention: int, when: list[object], then: list[Op]
) -> None:
    """Re-attach the run's record to the current retention lease when it hangs on an
    older one (once per lease rotation, not on every write: parallel steps of one run do
    not all write one key)."""
    if raw.lease != retention:
        when.append(exists(run.record))
        then.append(reattach(run.record, retention))


def _check_claim(key: str, claim: int, lease_id: int) -> list[FieldViolation]:
    violations = records.check_name("key", key)
    if claim <= 0:
        violations.append(FieldViolation("claim", "must be the claim Begin gave (> 0)"))
    if lease_id <= 0:
        violations.append(FieldViolation("lease_id", "must be the caller's lease (> 0)"))
    return violations


def _wait_until(wait_ms: int) -> float:
    """When a BUSY Begin stops waiting (monotonic time): wait_ms, at most 60 s, and before
    the call's deadline."""
    now = time.monotonic()
    until = now + min(wait_ms / 1000, MAX_WAIT_SECONDS)
    left = calls.current.get().remaining()
    if left is not None:
        until = min(until, now + left - DEADLINE_MARGIN_SECONDS)
    return until
