"""What the effect ledger's modules share: the substrate, writes on the effects retention
lease, the configured bounds, and the wording of the refusals more than one of them
gives.

Effects, journals, markers and runs hang on a retention lease of their own
(--effects-ttl, a RetentionLeases with that TTL): each write of a key re-attaches it to
the current one, so a record lives TTL after its last change. A run's record is
re-attached only when it hangs on an older lease (once per lease rotation), so parallel
steps of one run do not all write one key.

Error handling: nothing here raises but the refusals it builds (NOT_FOUND, NOT_HELD).
"""

from __future__ import annotations

from dataclasses import dataclass

from accord.coordinator.effects import records
from accord.coordinator.effects.records import (
    RUNNING,
    effect_of,
)
from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import (
    NotFound,
    NotHeld,
)
from accord.coordinator.substrate.idempotency import Writes
from accord.coordinator.substrate.keyspace import RunKeys
from accord.coordinator.substrate.limits import Limits
from accord.coordinator.substrate.retention import RetentionLeases
from accord.coordinator.substrate.txn import (
    Compare,
    KeyValue,
    Op,
    absent,
    exists,
    put,
    read,
    reattach,
)
from accord.v1 import effects_pb2

# A write whose compares failed is decided again from a fresh read; a key that changes
# this often under one call is contended beyond reason.
ATTEMPTS = 16


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

    async def current(self, raw: KeyValue) -> effects_pb2.Effect:
        """The effect of a record, its claim read when it says RUNNING."""
        effect = effect_of(raw, None, claim_read=False)
        if effect.state != RUNNING:
            return effect
        claim = await self.s.etcd.range(read(self.run(effect.run_id).claim(effect.key)))
        return effect_of(raw, claim.kvs[0] if claim.kvs else None)


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


def keep_run(
    raw: KeyValue | None,
    run: RunKeys,
    run_id: str,
    who: effects_pb2.EffectActor,
    retention: int,
    when: list[Compare],
    then: list[Op],
) -> None:
    """Add to a Begin's write what keeps its run's record: create it when it was not read
    (a new run, or one whose record expired before its effects), else re-attach it to the
    current retention lease when it hangs on an older one (once per lease rotation, not on
    every write: parallel steps of one run do not all write one key)."""
    if raw is None:
        record = effects_pb2.Run(
            run_id=run_id, status=effects_pb2.RUN_STATUS_RUNNING, created=who, updated=who
        )
        when.append(absent(run.record))
        then.append(put(run.record, record.SerializeToString(), lease=retention))
    elif raw.lease != retention:
        when.append(exists(run.record))
        then.append(reattach(run.record, retention))
