"""The watch workload under faults: every acknowledged write seen exactly once, in
revision order, across resumes on other replicas; and the validator catching a replica
whose resumed watches lose an event.

The runs share one fault cluster (tests/faults/cluster.py: 3 etcd members, 2 replicas,
every link through a proxy). Each seed runs the workload
(tests/faults/workloads/watches.py) through the client links while its plan's faults
(tests/faults/runs.py) are injected in turn: a replica killed and restarted, a replica
paused and resumed, an etcd member killed and restarted (the quorum kept), a replica cut
off etcd, the clients cut off a replica. Run with -s to see each run's report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.faults.cluster import FaultCluster, fault_cluster
from tests.faults.nemesis import Events, partition_from_etcd
from tests.faults.proxy import Mode
from tests.faults.recorder import Recorder
from tests.faults.runs import (
    counts,
    inject_in_turn,
    kinds_for,
    nemeses,
    run_during,
    seeds,
    timeline,
)
from tests.faults.workloads.watches import WatchRun, WatchWorkload, validate
from tests.harness import make_client, start_coordinator

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with fault_cluster(tmp_path_factory.mktemp("watch-faults")) as started:
        yield started


def _report(run: WatchRun) -> str:
    return "; ".join(
        f"watcher {w.index}: {len(w.events)} events, {w.resumes} resumes" for w in run.watchers
    )


@pytest.mark.parametrize("seed", seeds())
async def test_watches_see_every_write_once_under_faults(
    seed: int, cluster: FaultCluster, namespace: str
) -> None:
    print(f"seed={seed}")
    events = Events()
    faults = nemeses(kinds_for(seed), cluster, events, seed)
    workload = WatchWorkload(cluster.client_addresses(), namespace, seed)
    recorder = Recorder()
    origin = time.monotonic()
    run = await run_during(workload.run, recorder, inject_in_turn(faults, seed))
    started = time.monotonic()
    problems = validate(run)
    checked = time.monotonic() - started
    print(
        f"watches seed={seed}: {counts(recorder)}; {_report(run)}; faults: "
        f"{timeline(events, origin)}; validator {checked:.3f}s; verdict "
        f"{'valid' if not problems else f'{len(problems)} PROBLEMS'}"
    )
    print("\n".join(problems[:10]))
    assert events.count("start") == len(faults), "a fault was skipped"
    assert recorder.counts["ok"] > 50, "the workload made too little progress to mean much"
    assert sum(w.resumes for w in run.watchers) > 0
    assert problems == []


async def test_validator_catches_a_resumed_watch_losing_an_event(
    cluster: FaultCluster, namespace: str
) -> None:
    """A replica with watch.drop_one (ACCORD_TEST_BREAK) loses the first event of every
    watch opened at a start_revision: the watchers resuming through it miss writes."""
    broken = start_coordinator(
        cluster.base,
        "broken-drop-one",
        cluster.etcd_endpoints(),
        env={"ACCORD_TEST_BREAK": "watch.drop_one"},
        ws=False,
    )
    try:
        addresses = [cluster.direct_addresses()[0], broken.address]
        workload = WatchWorkload(addresses, namespace, seed=7)
        recorder = Recorder()
        run = await run_during(workload.run, recorder, asyncio.sleep(3))
    finally:
        broken.kill()
    problems = validate(run)
    print(f"watches drop one: {counts(recorder)}; {_report(run)}; {len(problems)} problems:")
    print("\n".join(problems[:10]))
    assert any("missed" in p for p in problems), problems


async def test_a_watch_whose_connection_is_reset_ends_quietly(
    cluster: FaultCluster, namespace: str
) -> None:
    """Found by a soak of this workload: a watch whose client connection was reset while
    its replica was blocked sending it events was closed later by the event loop, in
    another context, where the interceptor's reset of the call's context variable raised
    ValueError: the replica logged an "unexpected error" and counted the call INTERNAL."""
    replica, link = cluster.replicas[0], cluster.client_link(0)
    logged = replica.log.stat().st_size
    stop = asyncio.Event()

    async def write() -> None:
        async with make_client([replica.address], namespace, "writer") as c:
            n = 0
            while not stop.is_set():
                puts = (c.kv.put(f"busy/{k}", str(n)) for k in range(8))
                await asyncio.gather(*puts, return_exceptions=True)  # only the load matters
                n += 1

    writing = asyncio.create_task(write())
    try:
        for _ in range(10):
            async with make_client([cluster.proxies.address(link)], namespace) as c:
                watch = c.kv.watch("busy/", prefix=True)
                await watch.start()
                for _ in range(5):
                    await asyncio.wait_for(watch.__anext__(), 10)
                # The replica's sends block on flow control, then the connection resets.
                cluster.proxies.set(link, Mode.BLACKHOLE)
                await asyncio.sleep(1.0)
                cluster.proxies.set(link, Mode.DROP)
                await asyncio.sleep(0.2)
                cluster.proxies.set(link, Mode.PASS)
    finally:
        stop.set()
        await writing
    await asyncio.sleep(1)  # the loop closes the abandoned handlers
    with replica.log.open("rb") as log:
        log.seek(logged)
        tail = log.read().decode(errors="replace")
    errors = [line for line in tail.splitlines() if '"unexpected error"' in line]
    assert errors == [], errors[0][:3000]


async def test_a_watch_resumes_elsewhere_when_its_replica_cannot_reach_etcd(
    cluster: FaultCluster, namespace: str
) -> None:
    """Found by a soak of this workload: a replica cut off etcd answers a watch resumed
    at a revision with DEADLINE_EXCEEDED (its check of the revision waits for etcd until
    its call timeout), and the client's Watch raised that to the application instead of
    resuming on another replica."""
    events = Events()
    cut = partition_from_etcd(events, cluster, 0)
    direct = cluster.direct_addresses()
    async with (
        make_client(direct[1:], namespace, "writer") as writer,
        make_client(direct, namespace) as c,  # replica 0 first
    ):
        first = await writer.kv.put("w/x", "0")
        await cut.start()
        try:
            watch = c.kv.watch("w/x", start_revision=first.revision + 1)
            await writer.kv.put("w/x", "1")
            event = await asyncio.wait_for(watch.__anext__(), 60)
            assert event.kv.value == b"1"
            await watch.aclose()
        finally:
            await cut.stop()
