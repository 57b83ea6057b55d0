"""What the KV and watch fault runs share: their plans (a seed and the faults it injects)
and their one-line reports.

Plans: each fixed seed injects one kind of fault (so every kind runs in CI within the
budget), and one random seed, printed for reproduction, two kinds in a seeded order.
ACCORD_FAULT_SEED forces a single plan instead (to replay a failure): a fixed seed's, or
a random seed's.

Error handling: none.
"""

from __future__ import annotations

import os
import random

from tests.faults.recorder import Recorder
from tests.faults.replica_faults import Fault

FIXED = {1: [Fault.KILL_REPLICA], 2: [Fault.PAUSE_REPLICA], 3: [Fault.KILL_ETCD]}


def faults_for(seed: int) -> list[Fault]:
    if seed in FIXED:
        return FIXED[seed]
    return random.Random(seed).sample(list(Fault), 2)


def seeds() -> list[int]:
    forced = os.environ.get("ACCORD_FAULT_SEED")
    if forced:
        return [int(forced)]
    return [*FIXED, random.randrange(100, 1_000_000)]


def counts(recorder: Recorder) -> str:
    c = recorder.counts
    return (
        f"operations={len(recorder.operations)} ok={c['ok']} failed={c['failed']} "
        f"indeterminate={c['indeterminate']} resent={c['resent']} replayed={c['replayed']}"
    )
