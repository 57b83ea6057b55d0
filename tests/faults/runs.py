"""What the KV and watch fault runs share: their plans (a seed and the faults it injects,
from tests/faults/nemesis.py on a tests/faults/cluster.py cluster), the schedule that
injects them, and the one-line reports.

Plans: each fixed seed injects one kind of fault, so every kind runs in CI within the
budget, and one random seed, printed for reproduction, two kinds in a seeded order.
ACCORD_FAULT_SEED forces a single plan instead (to replay a failure): a fixed seed's, or
a random seed's. A plan's faults are injected one after another, each after a quiet
spell and held a second or two, then healed.

Error handling: a nemesis that fails to heal raises (the run is void); every nemesis is
healed before `inject_in_turn` returns, even when cancelled.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tests.faults.cluster import FaultCluster
from tests.faults.nemesis import (
    Events,
    KillEtcdMember,
    Nemesis,
    heal_all,
    kill_replica,
    partition_clients,
    partition_from_etcd,
    pause_replica,
)
from tests.faults.recorder import Recorder
from tests.faults.seeds import random_seed

T = TypeVar("T")


class Kind(enum.Enum):
    KILL_REPLICA = "kill+restart a replica"
    PAUSE_REPLICA = "pause+resume a replica"
    KILL_ETCD = "kill+restart an etcd member (quorum kept)"
    PARTITION_ETCD = "cut a replica off every etcd member"
    PARTITION_CLIENTS = "cut the clients off a replica"


FIXED = {
    1: [Kind.KILL_REPLICA],
    2: [Kind.PAUSE_REPLICA],
    3: [Kind.KILL_ETCD],
    4: [Kind.PARTITION_ETCD, Kind.PARTITION_CLIENTS],
}


def kinds_for(seed: int) -> list[Kind]:
    if seed in FIXED:
        return FIXED[seed]
    return random.Random(seed).sample(list(Kind), 2)


def seeds() -> list[int]:
    forced = os.environ.get("ACCORD_FAULT_SEED")
    if forced:
        return [int(forced)]
    return [*FIXED, 100 + random_seed(1_000_000 - 100)]


def nemeses(kinds: list[Kind], cluster: FaultCluster, events: Events, seed: int) -> list[Nemesis]:
    rng = random.Random(f"{seed}/targets")
    out: list[Nemesis] = []
    for kind in kinds:
        replica = rng.randrange(len(cluster.replicas))
        if kind is Kind.KILL_REPLICA:
            out.append(kill_replica(events, cluster, seed=seed))
        elif kind is Kind.PAUSE_REPLICA:
            out.append(pause_replica(events, cluster, replica))
        elif kind is Kind.KILL_ETCD:
            out.append(KillEtcdMember(events, cluster, rng=random.Random(seed)))
        elif kind is Kind.PARTITION_ETCD:
            out.append(partition_from_etcd(events, cluster, replica))
        else:
            out.append(partition_clients(events, cluster, replica))
    return out


async def inject_in_turn(faults: list[Nemesis], seed: int) -> None:
    """Each fault after a quiet spell, held a second or two, then healed."""
    rng = random.Random(f"{seed}/schedule")
    try:
        for nemesis in faults:
            await asyncio.sleep(rng.uniform(0.5, 1.2))
            await nemesis.start()
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            await nemesis.stop()
        await asyncio.sleep(0.5)
    finally:
        await heal_all(faults)


def timeline(events: Events, origin: float) -> str:
    """Each action at its time from origin; a target named on start only."""
    return ", ".join(
        f"{e.began - origin:.1f}s {e.action} {e.nemesis}"
        + (f" ({e.target})" if e.action == "start" else "")
        for e in events.events
    )


def counts(recorder: Recorder) -> str:
    c = recorder.counts
    return (
        f"operations={len(recorder.operations)} ok={c['ok']} failed={c['failed']} "
        f"indeterminate={c['indeterminate']} resent={c['resent']} replayed={c['replayed']}"
    )


async def run_during(
    work: Callable[[Recorder, asyncio.Event], Awaitable[T]],
    recorder: Recorder,
    faults: Awaitable[None],
) -> T:
    """A workload's run (work(recorder, stop)) while faults are injected; stopped when
    they end (healed) or fail, and its result once it has wound down."""
    stop = asyncio.Event()
    running = asyncio.ensure_future(work(recorder, stop))
    try:
        await faults
    finally:
        stop.set()
        result = await running
    return result
