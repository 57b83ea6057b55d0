"""Compensating a run: its registered compensations, newest effect's first.

A Complete that registers a compensation writes it twice in its own transaction: under
the compensated effect's began revision and key (RunKeys.compensation, so one range read
greatest key first lists them in reverse journal order) and under the compensation's
own effect key (RunKeys.compensation_key, which Begin reads to mark that effect's
`compensates`). Compensate sets the run COMPENSATING (unless it already is: calling it
again writes nothing) and returns the list with each compensation effect's state; the
agents then Begin each key, and the ledger's exactly-once Begin is what makes two agents
compensating at once run each compensation once. Completing a compensation effect
writes its compensated marker, and the run reads COMPENSATED once they all have one
(runs.py).

Cost: one count-and-record transaction (runs.py), one range of the registrations (at
most one per effect of the run: --effects-max-per-run bounds it), one read of the
compensation effects' states per PER_TXN of them, and at most one write.

Error handling: an unknown run is NOT_FOUND; a run without registered compensations is
NOTHING_TO_COMPENSATE, and nothing is written.
"""

from __future__ import annotations

from accord.coordinator.effects import records
from accord.coordinator.effects.ledger import Ledger
from accord.coordinator.effects.records import effect_of
from accord.coordinator.effects.runs import PER_TXN, Runs
from accord.coordinator.substrate.errors import NothingToCompensate, require
from accord.coordinator.substrate.txn import first_kv, get, read, txn
from accord.v1 import effects_pb2


class Compensations:
    def __init__(self, ledger: Ledger, runs: Runs) -> None:
        self._l = ledger
        self._s = ledger.s
        self._runs = runs

    async def compensate(
        self, run_id: str
    ) -> tuple[int, effects_pb2.Run, list[effects_pb2.Compensation]]:
        require(records.check_name("run_id", run_id))
        _, run, _ = await self._runs.run(run_id)
        keys = self._l.run(run_id)
        request = read(keys.compensation(), prefix=True)
        request.sort_order = request.DESCEND
        request.sort_target = request.KEY
        found = await self._s.etcd.range(request)
        if not found.kvs:
            raise NothingToCompensate(
                f"run {run_id!r} has no registered compensation (none of its effects "
                "completed with one); nothing changed",
                metadata={"run_id": run_id},
            )
        listed = [effects_pb2.Compensation.FromString(kv.value) for kv in found.kvs]
        if run.status not in (
            effects_pb2.RUN_STATUS_COMPENSATING,
            effects_pb2.RUN_STATUS_COMPENSATED,
        ):
            await self._runs.write_status(run_id, effects_pb2.RUN_STATUS_COMPENSATING)
        for start in range(0, len(listed), PER_TXN):
            chunk = listed[start : start + PER_TXN]
            ops = []
            for c in chunk:
                ops += [get(self._l.effect(c.key)), get(keys.claim(c.key))]
            states = await self._s.etcd.txn(txn(then=ops), retry=True)
            for i, c in enumerate(chunk):
                raw = first_kv(states.responses[2 * i])
                if raw is not None:
                    c.state = effect_of(raw, first_kv(states.responses[2 * i + 1])).state
        revision, run, _ = await self._runs.run(run_id)
        return revision, run, listed
