"""The sessions workload under faults: every acknowledged edit present exactly once in
every replica's document and every subscriber's, all of them converged; and the checker
catching a replica that loses an update's fan-out, one that applies a retried Apply
twice, and one that answers reads from a stale cache.

The runs share one fault cluster (tests/faults/cluster.py: 3 etcd members, 2 replicas,
every link through a proxy). Each seed runs the workload
(tests/faults/workloads/sessions.py) through the client links while its faults are
injected in turn (tests/faults/runs.py): seed 1 kills and restarts a replica and
pauses one; seed 2 kills and restarts an etcd member (the quorum kept), cuts a replica
off etcd and cuts the clients off a replica; the random seed injects two kinds of
runs.py's random plans and a delay (the clients' link to a replica, or a replica's etcd
links). Run with -s to see each run's report.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from collections.abc import Iterator

import pytest
from pycrdt import Array

from accord.client import ops
from accord.client.retry import RetryPolicy
from tests.faults.cluster import FaultCluster, fault_cluster
from tests.faults.nemesis import Events, Nemesis, delay_clients, delay_etcd
from tests.faults.proxy import Mode
from tests.faults.recorder import Recorder
from tests.faults.runs import Kind, counts, inject_in_turn, kinds_for, nemeses, run_during, timeline
from tests.faults.seeds import random_seed
from tests.faults.workloads.sessions import SessionRun, SessionWorkload, check
from tests.harness import make_client, start_coordinator

pytestmark = pytest.mark.faults

FIXED = {
    1: [Kind.KILL_REPLICA, Kind.PAUSE_REPLICA],
    2: [Kind.KILL_ETCD, Kind.PARTITION_ETCD, Kind.PARTITION_CLIENTS],
}


def _seeds() -> list[int]:
    """The fixed seeds and one random one; ACCORD_FAULT_SEED alone when set (a replay)."""
    forced = os.environ.get("ACCORD_FAULT_SEED")
    return [int(forced)] if forced else [*FIXED, 100 + random_seed(1_000_000 - 100)]


def _faults(seed: int, cluster: FaultCluster, events: Events) -> list[Nemesis]:
    """A fixed seed's kinds; a random seed's two kinds and a delay (of the clients' link
    to a replica, or of a replica's etcd links: the seed chooses)."""
    if seed in FIXED:
        return nemeses(FIXED[seed], cluster, events, seed)
    rng = random.Random(f"{seed}/delay")
    replica = rng.randrange(len(cluster.replicas))
    delay = rng.choice([delay_clients, delay_etcd])(events, cluster, replica, 0.2)
    return [*nemeses(kinds_for(seed), cluster, events, seed), delay]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with fault_cluster(tmp_path_factory.mktemp("session-faults")) as started:
        yield started


def _report(run: SessionRun, recorder: Recorder) -> str:
    edits = sum(len(e) for e in run.acknowledged.values())
    live = sum(s.edits for s in run.subscribers)
    errors = {k: v for k, v in recorder.counts.items() if k[0].isupper()}
    return (
        f"{edits} acknowledged edits ({live} made by {len(run.subscribers)} subscribers), "
        f"{len(run.reads)} reads, "
        f"errors {errors}, settled in {run.settle_seconds:.1f}s"
    )


@pytest.mark.parametrize("seed", _seeds())
async def test_sessions_converge_with_every_acknowledged_edit_under_faults(
    seed: int, cluster: FaultCluster, namespace: str
) -> None:
    print(f"seed={seed}")
    events = Events()
    faults = _faults(seed, cluster, events)
    workload = SessionWorkload(cluster.client_addresses(), namespace, seed)
    recorder = Recorder()
    origin = time.monotonic()
    run = await run_during(workload.run, recorder, inject_in_turn(faults, seed))
    started = time.monotonic()
    problems = check(run)
    checked = time.monotonic() - started
    print(
        f"sessions seed={seed}: {counts(recorder)}; {_report(run, recorder)}; faults: "
        f"{timeline(events, origin)}; checker {checked * 1000:.1f}ms; verdict "
        f"{'valid' if not problems else f'{len(problems)} PROBLEMS'}"
    )
    print("\n".join(problems[:10]))
    assert events.count("start") == len(faults), "a fault was skipped"
    assert recorder.counts["ok"] > 50, "the workload made too little progress to mean much"
    assert recorder.counts["failed"] > 0, "no doomed edit was refused"
    assert problems == []


async def _broken_run(
    cluster: FaultCluster,
    namespace: str,
    bug: str,
    seed: int,
    *,
    alone: bool = False,
    mix: tuple[float, ...] = SessionWorkload.mix,
) -> list[str]:
    """The workload for 1.5 s, without faults, through a healthy replica and one with bug
    (or, alone, through the broken one only)."""
    broken = start_coordinator(
        cluster.base,
        f"broken-{bug.rsplit('.', maxsplit=1)[-1]}",
        cluster.etcd_endpoints(),
        env={"ACCORD_TEST_BREAK": bug},
        ws=False,
    )
    try:
        addresses = [broken.address] if alone else [cluster.direct_addresses()[0], broken.address]
        workload = SessionWorkload(addresses, namespace, seed, hasty=(0.005, 0.04), mix=mix)
        recorder = Recorder()
        # settle briefly: these runs are meant not to converge
        work = functools.partial(workload.run, settle=2.0)
        run = await run_during(work, recorder, asyncio.sleep(1.5))
    finally:
        broken.kill()
    problems = check(run)
    report = _report(run, recorder)
    print(f"sessions {bug}: {counts(recorder)}; {report}; {len(problems)} problems:")
    print("\n".join(problems[:10]))
    return problems


async def test_checker_catches_a_replica_losing_an_update_fanout(
    cluster: FaultCluster, namespace: str
) -> None:
    """A replica with sessions.drop_fanout keeps one update in three from its
    subscribers: they diverge (nothing makes them resubscribe)."""
    problems = await _broken_run(cluster, namespace, "sessions.drop_fanout", seed=7)
    assert any("replica 1 diverged" in p for p in problems), problems
    assert not any("on replica 0 diverged" in p for p in problems), problems


async def test_checker_catches_a_replica_applying_a_retried_apply_twice(
    cluster: FaultCluster, namespace: str
) -> None:
    """A replica with sessions.apply_twice ignores an Apply's request_id: a hasty Apply
    that went through after its caller gave up is applied again by the resend, and the
    element appears twice. Every editor goes through that replica and makes only hasty
    Applies, since few of them go through after their caller gave up."""
    problems = await _broken_run(
        cluster, namespace, "sessions.apply_twice", seed=8, alone=True, mix=(0, 0, 1, 0, 0)
    )
    assert any("present 2 times" in p for p in problems), problems


async def test_checker_catches_a_replica_answering_reads_from_a_stale_cache(
    cluster: FaultCluster, namespace: str
) -> None:
    """A replica with sessions.stale_reads answers a Read with what it answered for the
    session in the last half second: its reads lack edits acknowledged before them."""
    problems = await _broken_run(cluster, namespace, "sessions.stale_reads", seed=9)
    assert any("acknowledged before it" in p for p in problems), problems
    assert not any("on replica 0 at" in p for p in problems), problems


async def test_a_synced_session_outlasts_its_replicas_out_of_reach(
    cluster: FaultCluster, namespace: str
) -> None:
    """Found by a soak of this workload (seed 11, every nemesis for 60 s): a synced
    session whose replicas were out of reach for a while (there, the clients cut off its
    only replica for 36 s) stopped syncing for good after 50 failed attempts, so its
    later edits were never pushed. It must go on trying until its replicas are back."""
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.05)
    link = cluster.client_link(0)
    pinned = make_client(cluster.client_addresses()[:1], namespace, "pinned", timeout=1.0,
                         retry=retry)  # fmt: skip
    async with (
        pinned,
        make_client(cluster.direct_addresses(), namespace, "other") as other,
        pinned.sessions.synced("outage", roots={"edits": "array"}) as live,
    ):
        edits = live.doc.get("edits", type=Array)
        cluster.proxies.set(link, Mode.DROP)
        try:
            edits.append("during")
            await asyncio.sleep(5)  # 50 attempts to subscribe and to push took < 3 s
            assert live.error is None, live.error
        finally:
            cluster.proxies.set(link, Mode.PASS)
        await live.flush(30)
        after = await other.sessions.apply("outage", ops.array_append("edits", "after"))
        await live.wait_for(after.revision, 30)
        assert edits.to_py() == (await other.sessions.read("outage")).json["edits"]
        assert sorted(edits.to_py() or []) == ["after", "during"]
