"""The votes workload under faults (issue 16, workload 3), checked by
tests/faults/workloads/votes_check.py: exactly one decision per vote, the same wherever
it is read or watched, counting exactly the acknowledged ballots.

The runs share one fault cluster (tests/faults/cluster.py: 3 etcd members, 2 replicas,
every link through a proxy). Each seed runs one round of votes while its plan's faults
(tests/faults/runs.py) are injected in turn, and, when its plan says so, one replica's
vote clock is skewed for the whole round (tests/faults/nemesis.py ClockSkew: that replica
judges the deadlines early or late). The fixed seeds cover a replica killed, an etcd
member killed (the quorum kept) and a clock skewed ahead (seed 1), a replica paused, a
replica cut off etcd, the clients cut off a replica and a clock skewed behind (seed 2);
a random seed (printed; ACCORD_FAULT_SEED forces it) two kinds of fault at random, and a
skew half the time. Then the same workload through a replica that stores ballots
without checking the vote is still open, or acknowledges ballots it never wrote, must be
flagged.
Run with -s to see each run's report.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import FaultCluster, fault_cluster
from tests.faults.nemesis import ClockSkew, Events, Nemesis
from tests.faults.recorder import Recorder
from tests.faults.runs import Kind, counts, inject_in_turn, nemeses, run_during, timeline
from tests.faults.seeds import random_seed
from tests.faults.workloads.votes import VotesWorkload
from tests.faults.workloads.votes_check import check_votes
from tests.harness import start_coordinator

pytestmark = pytest.mark.faults

# seed -> (faults in turn, the skewed replica's offset in seconds or None)
FIXED: dict[int, tuple[list[Kind], float | None]] = {
    1: ([Kind.KILL_REPLICA, Kind.KILL_ETCD], 3.0),
    2: ([Kind.PAUSE_REPLICA, Kind.PARTITION_ETCD, Kind.PARTITION_CLIENTS], -3.0),
}


def plan(seed: int) -> tuple[list[Kind], float | None]:
    if seed in FIXED:
        return FIXED[seed]
    rng = random.Random(seed)
    kinds = rng.sample(list(Kind), 2)
    skew = rng.choice([None, rng.uniform(1.5, 4.0) * rng.choice([-1, 1])])
    return kinds, skew


def seeds() -> list[int]:
    forced = os.environ.get("ACCORD_FAULT_SEED")
    if forced:
        return [int(forced)]
    return [*FIXED, 100 + random_seed(1_000_000 - 100)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with fault_cluster(tmp_path_factory.mktemp("votes-faults")) as started:
        yield started


async def skewed_during(skew: Nemesis | None, faults: list[Nemesis], seed: int) -> None:
    """The faults in turn, with one replica's clock skewed throughout (if any)."""
    if skew is None:
        await inject_in_turn(faults, seed)
        return
    await skew.start()
    try:
        await inject_in_turn(faults, seed)
    finally:
        await skew.stop()


@pytest.mark.parametrize("seed", seeds())
async def test_votes_decide_once_under_faults(
    seed: int, cluster: FaultCluster, namespace: str, tmp_path: Path
) -> None:
    print(f"seed={seed}")
    kinds, offset = plan(seed)
    events = Events()
    faults = nemeses(kinds, cluster, events, seed)
    skew = None
    if offset is not None:
        replica = random.Random(f"{seed}/skew").randrange(len(cluster.replicas))
        skew = ClockSkew(events, cluster, replica, offset)
    workload = VotesWorkload(
        cluster.client_addresses(),
        namespace,
        seed,
        replicas=tuple(cluster.direct_addresses()),
        rounds=1,
    )
    recorder = Recorder()
    origin = time.monotonic()
    await run_during(workload.run, recorder, skewed_during(skew, faults, seed))
    started = time.monotonic()
    verdict = check_votes(recorder.operations)
    checked = time.monotonic() - started
    print(
        f"votes seed={seed}: {counts(recorder)}; {verdict.summary()}; faults: "
        f"{timeline(events, origin)}; checker {checked * 1000:.1f} ms; verdict "
        + ("valid" if verdict.ok else "INVALID")
    )
    if not verdict.ok:
        recorder.save(tmp_path / "history.jsonl")
        print(f"history: {tmp_path / 'history.jsonl'}")
    assert events.count("start") == len(faults) + (skew is not None), "a fault was skipped"
    assert verdict.ok, verdict.problems
    assert verdict.casts["ok"] > 20, "too few acknowledged ballots to mean much"
    if seed in FIXED:  # what they are chosen to cover (a random plan may skew it away)
        assert verdict.refusals["VOTE_CLOSED"] > 0, "no ballot came after a decision"
        # Not asserted: a vote decided early. Whether one is depends on the timing of the
        # casts against a skewed clock (CI once saw seed 1 close every vote at its deadline).
        assert any("DEADLINE" in o for o in verdict.outcomes), "no vote decided at its deadline"


# break -> a problem the checker must report
BREAKS = {
    # Voters after an early decision are accepted by the broken replica.
    "votes.skip_open_check": "after the decision",
    # An acknowledged ballot is nowhere: not in the stored ballots, nor counted.
    "votes.ack_unwritten": "is stored as None",
}


@pytest.mark.parametrize("broken_by", BREAKS)
async def test_checker_catches_a_broken_server(
    broken_by: str, cluster: FaultCluster, namespace: str
) -> None:
    """The workload through a replica with a deliberate bug (ACCORD_TEST_BREAK) and a
    sound replica, without faults: the checker flags what the bug did."""
    broken = start_coordinator(
        cluster.base,
        f"broken-{broken_by}",
        cluster.etcd_endpoints(),
        env={"ACCORD_TEST_BREAK": broken_by},
        ws=False,
    )
    try:
        addresses = [broken.address, cluster.direct_addresses()[0]]
        workload = VotesWorkload(addresses, namespace, seed=7, period=(3.0, 4.0), rounds=1)
        recorder = Recorder()
        await run_during(workload.run, recorder, asyncio.sleep(1))
    finally:
        broken.kill()
    verdict = check_votes(recorder.operations)
    print(f"{broken_by}: {counts(recorder)}; {verdict.summary()}")
    print("\n".join(verdict.problems[:5]))
    assert not verdict.ok
    assert any(BREAKS[broken_by] in p for p in verdict.problems), verdict.problems
