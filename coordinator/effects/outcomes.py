"""Ending a claim: Complete records an outcome, Abort releases the claim without one.

Both are one etcd transaction that applies only while the caller's claim holds: the
record is still at the claim (a RUNNING record's mod_revision is its claim's token), the
claim key exists, was created at that token and hangs on the caller's lease; with a
fence, its lock grant holds too (locks/fencing.py, FENCED). So an executor whose lease
ended, or whose effect was claimed again since, writes nothing. The same transaction
deletes the claim, moves the run's markers (open -> succeeded/failed, or aborted),
re-attaches the journal entry to the retention lease, and, for a completion that names a
compensation, registers it twice (by the compensated effect's began revision and key, for
Compensate's reverse order, and by the compensation's own effect key, for Begin).

Completing a finished effect replays its first outcome (replayed), whichever claim is
named: the first outcome stands. Aborting an effect aborted by the same claim answers
with it again.

Error handling: bad input is INVALID_ARGUMENT; a lease that is another principal's is
PERMISSION_DENIED; an unknown key is NOT_FOUND; a claim that does not hold (another
claim, an ended lease, an aborted effect) is NOT_HELD with the current Effect; a lost
fence is FENCED; Abort of a finished effect is CONDITION_FAILED with the Effect. An
outcome that would make the record larger than one transaction may carry (1 MiB:
arguments, result and compensation together) is INVALID_ARGUMENT.
Refusals write nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from accord.coordinator.effects import records
from accord.coordinator.effects.ledger import ATTEMPTS, Ledger, not_found, not_held
from accord.coordinator.effects.records import (
    ABORTED,
    ABORTED_MARK,
    FINAL,
    OPEN,
    RUNNING,
    actor,
    effect_of,
    stored,
)
from accord.coordinator.leases.store import check_owner, lease_of
from accord.coordinator.locks.fencing import FenceGuard, Fencing
from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import (
    BackendUnavailable,
    ConditionFailed,
    FieldViolation,
    invalid,
    require,
)
from accord.coordinator.substrate.txn import (
    KeyValue,
    Op,
    Txn,
    created_at,
    delete,
    first_kv,
    get,
    lease_is,
    mod_is,
    put,
    txn,
)
from accord.v1 import common_pb2, effects_pb2


class Outcomes:
    def __init__(self, ledger: Ledger, fencing: Fencing) -> None:
        self._l = ledger
        self._s = ledger.s
        self._fencing = fencing

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
        ns = calls.current.get().namespace
        state = records.SUCCEEDED if kind == "success" else records.FAILED
        for _ in range(ATTEMPTS):
            revision, raw = await self._read(key, lease_id)
            effect = effect_of(raw, None, claim_read=False)
            if effect.state in FINAL:
                return revision, effect, True
            if effect.state != RUNNING or raw.mod_revision != claim:
                raise not_held(await self._l.current(raw), claim, lease_id)
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
                        put(
                            run.compensation(raw.create_revision, key), registered, lease=retention
                        ),
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

    async def _read(self, key: str, lease_id: int) -> tuple[int, KeyValue]:
        """The effect's record, NOT_FOUND without one; with auth, read with the caller's
        lease record in one transaction, refused when that lease is another principal's
        (a lease that is gone passes: its claims are gone too)."""
        ops = [get(self._l.effect(key))]
        if calls.current.get().principal:
            ops.append(get(self._s.keys.lease(calls.current.get().namespace, lease_id)))
        found = await self._s.etcd.txn(txn(then=ops), retry=True)
        record, *lease = (first_kv(r) for r in found.responses)
        if lease and lease[0] is not None:
            check_owner(lease_of(lease_id, lease[0]))
        if record is None:
            raise not_found(key)
        return int(found.header.revision), record

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
        ns = calls.current.get().namespace
        for _ in range(ATTEMPTS):
            revision, raw = await self._read(key, lease_id)
            effect = effect_of(raw, None, claim_read=False)
            if effect.state in FINAL:
                raise ConditionFailed(
                    f"effect {key!r} is already {records.state_name(effect.state)}: it has an "
                    "outcome, which stands; there is no claim to release",
                    details=[effect],
                    metadata={"key": key, "state": records.state_name(effect.state)},
                )
            if effect.state == ABORTED and effect.claim == claim:
                return revision, effect  # aborted by this claim already
            if effect.state != RUNNING or raw.mod_revision != claim:
                raise not_held(await self._l.current(raw), claim, lease_id)
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


def _check_claim(key: str, claim: int, lease_id: int) -> list[FieldViolation]:
    violations = records.check_name("key", key)
    if claim <= 0:
        violations.append(FieldViolation("claim", "must be the claim Begin gave (> 0)"))
    if lease_id <= 0:
        violations.append(FieldViolation("lease_id", "must be the caller's lease (> 0)"))
    return violations
