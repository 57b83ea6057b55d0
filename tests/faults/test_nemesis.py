"""Each nemesis does what it says, and heals: on a real fault cluster (3 etcd members, 2
replicas, every link through a proxy) shared by the module; every test leaves it whole."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from accord.client import AsyncClient, RetryPolicy
from accord.client.errors import AccordError
from accord.v1 import votes_pb2
from tests.faults.cluster import FaultCluster, fault_cluster
from tests.faults.nemesis import (
    ClockSkew,
    Events,
    KillEtcdMember,
    PauseProcess,
    delay_clients,
    heal_all,
    kill_replica,
    partition_clients,
    partition_from_etcd,
    pause_replica,
    run_schedule,
)
from tests.faults.proxy import Mode
from tests.harness import REPO, Process, health, make_client, until

pytestmark = pytest.mark.faults

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with fault_cluster(tmp_path_factory.mktemp("nemesis")) as started:
        yield started


@pytest.fixture(autouse=True)
def whole(cluster: FaultCluster) -> Iterator[None]:
    """Whatever a test broke is mended before the next one."""
    yield
    cluster.proxies.heal()
    for process in [*cluster.members, *cluster.replicas]:
        if process.running():
            process.resume()
        else:
            process.start()


def pinned(cluster: FaultCluster, namespace: str, address: str, timeout: float = 3) -> AsyncClient:
    """A client of one address that tries once: its failures are the link's, not hidden."""
    return make_client([address], namespace, timeout=timeout, retry=RetryPolicy(max_attempts=1))


async def status(address: str) -> int:
    return int(await health(address))


def code(error: BaseException) -> grpc.StatusCode | None:
    assert isinstance(error, AccordError), repr(error)
    return error.code


async def test_a_replica_cut_off_etcd_stops_serving_then_recovers(
    cluster: FaultCluster, namespace: str
) -> None:
    events = Events()
    nemesis = partition_from_etcd(events, cluster, replica=0)
    cut, other = cluster.direct_addresses()
    await nemesis.start()
    await until(lambda: status(cut), lambda s: s == NOT_SERVING, "replica 0 NOT_SERVING", 30)
    async with pinned(cluster, namespace, cut) as c, pinned(cluster, namespace, other) as o:
        with pytest.raises(AccordError) as refused:
            await c.kv.put("k", "cut off")
        assert code(refused.value) in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }
        await o.kv.put("k", "the other replica still serves")
        await nemesis.stop()
        await until(lambda: status(cut), lambda s: s == SERVING, "replica 0 SERVING", 30)
        await c.kv.put("k", "healed")
        assert (got := await o.kv.get("k")) is not None and got.value == b"healed"
    assert [(e.action, e.target) for e in events.events] == [
        ("start", f"blackhole: {', '.join(cluster.etcd_link(0, m) for m in range(3))}"),
        ("stop", f"blackhole: {', '.join(cluster.etcd_link(0, m) for m in range(3))}"),
    ]
    assert events.events[0].began <= events.events[0].ended <= events.events[1].began


async def test_a_replica_cut_off_silently_from_two_members_serves_through_the_third(
    cluster: FaultCluster, namespace: str
) -> None:
    """Regression: the replica's channel kept its stalled connections to the two members
    (gRPC's 60 s ping timeout) and most of its calls went there and timed out; now they
    are dropped after a 5 s keepalive and its calls go to the member it reaches."""
    nemesis = partition_from_etcd(Events(), cluster, replica=0, members=[0, 1])
    async with pinned(cluster, namespace, cluster.direct_addresses()[0]) as c:
        await c.kv.put("k", "before")
        await nemesis.start()
        in_a_row = 0

        async def five_puts_in_a_row() -> int:
            nonlocal in_a_row
            try:
                await c.kv.put("k", "through member 2")
                in_a_row += 1
            except AccordError:
                in_a_row = 0
            return in_a_row

        await until(five_puts_in_a_row, lambda n: n >= 5, "5 puts in a row", 45)
        await nemesis.stop()


@pytest.mark.parametrize("mode", [Mode.BLACKHOLE, Mode.DROP])
async def test_clients_cut_off_a_replica_fail_then_recover(
    cluster: FaultCluster, namespace: str, mode: Mode
) -> None:
    nemesis = partition_clients(Events(), cluster, replica=1, mode=mode)
    through = cluster.client_addresses()[1]
    async with pinned(cluster, namespace, through, timeout=2) as c:
        await c.kv.put("k", "before")
        await nemesis.start()
        with pytest.raises(AccordError) as refused:
            await c.kv.put("k", "cut off")
        expected = {grpc.StatusCode.UNAVAILABLE}
        if mode is Mode.BLACKHOLE:  # a stalled connection may only show at the deadline
            expected.add(grpc.StatusCode.DEADLINE_EXCEEDED)
        assert code(refused.value) in expected
        # The replica itself is fine: only the link is cut.
        assert await status(cluster.direct_addresses()[1]) == SERVING
        await nemesis.stop()

        async def put() -> bool:
            try:
                await c.kv.put("k", "healed")
                return True
            except AccordError:
                return False

        await until(put, bool, "a put through the healed link", 30)


async def test_a_delayed_link_delays_each_way(cluster: FaultCluster, namespace: str) -> None:
    nemesis = delay_clients(Events(), cluster, replica=0, seconds=0.5)
    async with pinned(cluster, namespace, cluster.client_addresses()[0], timeout=10) as c:
        await c.kv.put("k", "v")
        await nemesis.start()
        began = time.monotonic()
        await c.kv.get("k")
        assert time.monotonic() - began >= 1.0  # 0.5 s there, 0.5 s back: a lower bound
        await nemesis.stop()
        assert cluster.proxies.mode(cluster.client_link(0)) == (Mode.PASS, 0.0)


async def test_a_killed_replica_restarts_and_the_other_serves_meanwhile(
    cluster: FaultCluster, namespace: str
) -> None:
    nemesis = kill_replica(Events(), cluster, replica=0)
    victim = cluster.replicas[0]
    pid = victim.pid
    async with cluster.client(namespace) as c:
        assert await nemesis.start()
        assert not victim.running()
        for i in range(5):  # the client steers to the replica left
            await c.kv.put(f"k{i}", "while one replica is dead")
        await nemesis.stop()
    assert victim.running() and victim.pid != pid
    async with pinned(cluster, namespace, victim.address) as c:
        assert await c.kv.get("k4") is not None


async def test_a_replica_killed_while_cut_off_etcd_restarts_with_its_links_healed(
    cluster: FaultCluster, namespace: str
) -> None:
    events = Events()
    cut = partition_from_etcd(events, cluster, replica=0)
    kill = kill_replica(events, cluster, replica=0)
    try:
        assert await cut.start()
        assert await kill.start()
        await kill.stop()  # a replica cut off every member would never start
        assert cluster.replicas[0].running()
        async with pinned(cluster, namespace, cluster.replicas[0].address) as c:
            await c.kv.put("k", "restarted")
    finally:
        await heal_all([kill, cut])
    assert [e.action for e in events.events] == [
        "start",
        "start",
        "heal-etcd-links-to-restart",
        "stop",
        "stop",
    ]


async def test_a_random_replica_kill_keeps_one_running(cluster: FaultCluster) -> None:
    events = Events()
    first = kill_replica(events, cluster, seed=3)
    second = kill_replica(events, cluster, seed=4)
    try:
        assert await first.start()
        assert not await second.start()  # the last one running is spared
        assert sum(r.running() for r in cluster.replicas) == 1
    finally:
        await heal_all([first, second])
    assert all(r.running() for r in cluster.replicas)
    assert [e.action for e in events.events] == ["start", "skip", "stop"]


async def test_a_paused_replica_times_out_then_resumes(
    cluster: FaultCluster, namespace: str
) -> None:
    nemesis = pause_replica(Events(), cluster, replica=1)
    frozen = cluster.direct_addresses()[1]
    async with (
        pinned(cluster, namespace, frozen, timeout=1.5) as c,
        cluster.client(namespace) as both,
    ):
        await c.kv.put("k", "before")
        await nemesis.start()
        assert _state(cluster.replicas[1].pid) == "T"
        with pytest.raises(AccordError) as silent:
            await c.kv.get("k")
        assert code(silent.value) == grpc.StatusCode.DEADLINE_EXCEEDED
        await both.kv.put("k", "through the replica that runs")
        await nemesis.stop()
        assert _state(cluster.replicas[1].pid) != "T"
        got = await c.kv.get("k")
        assert got is not None and got.value == b"through the replica that runs"


async def test_an_etcd_member_kill_keeps_the_quorum(cluster: FaultCluster, namespace: str) -> None:
    events = Events()
    first = KillEtcdMember(events, cluster, member=0, name="kill-etcd-0")
    second = KillEtcdMember(events, cluster, member=1, name="kill-etcd-1")
    try:
        assert await first.start()
        assert not await second.start()  # a second kill would leave 1 of 3: no quorum
        assert [m.running() for m in cluster.members] == [False, True, True]
        async with cluster.client(namespace, timeout=20) as c:
            for i in range(5):
                await c.kv.put(f"k{i}", "while a member is dead")
    finally:
        await heal_all([first, second])
    revived = cluster.members[0]
    assert revived.running()
    revived.wait_ready()
    key = f"accord/ns/{namespace}/"
    assert len(revived.kvs(key, prefix=True)) >= 5  # a quorum read, answered by it
    assert [e.action for e in events.events] == ["start", "skip", "stop"]


async def test_losing_the_etcd_quorum_only_when_told(cluster: FaultCluster, namespace: str) -> None:
    events = Events()
    kills = [KillEtcdMember(events, cluster, member=m, allow_quorum_loss=True) for m in (0, 1)]
    try:
        assert all([await k.start() for k in kills])
        assert [m.running() for m in cluster.members] == [False, False, True]
        # Without a quorum nothing is written, and the replicas say so: the member left
        # answers Status but names no leader (they stayed SERVING before).
        for address in cluster.direct_addresses():
            await until(lambda a=address: status(a), lambda s: s == NOT_SERVING, address, 30)
        async with pinned(cluster, namespace, cluster.direct_addresses()[0], 3) as c:
            with pytest.raises(AccordError) as refused:
                await c.kv.put("k", "no quorum")
            assert code(refused.value) in {
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            }
    finally:
        await asyncio.gather(*(k.stop() for k in kills))  # both at once: each needs the other
    for address in cluster.direct_addresses():
        await until(lambda a=address: status(a), lambda s: s == SERVING, f"{address}", 30)
    async with cluster.client(namespace) as c:
        await c.kv.put("k", "quorum back")


async def test_a_paused_agent_does_nothing_until_resumed(
    cluster: FaultCluster, namespace: str, tmp_path: Path
) -> None:
    agent = Process(name="agent", log=tmp_path / "agent.log")
    agent.popen = subprocess.Popen(
        [sys.executable, str(REPO / "tests/harness/agent_process.py"),
         cluster.direct_addresses()[0], namespace, "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert agent.popen.stdin is not None and agent.popen.stdout is not None
    lines: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    stdout = agent.popen.stdout
    reading = loop.run_in_executor(None, _read_lines, stdout, lines, loop)
    try:
        assert (await asyncio.wait_for(lines.get(), 30)).startswith(b"token ")
        nemesis = PauseProcess("pause-agent", Events(), agent)
        await nemesis.start()
        assert _state(agent.pid) == "T"
        agent.popen.stdin.write(b"write\n")
        agent.popen.stdin.flush()
        with pytest.raises(TimeoutError):  # stopped, it cannot answer
            await asyncio.wait_for(lines.get(), 1.0)
        await nemesis.stop()
        assert (await asyncio.wait_for(lines.get(), 30)) == b"written\n"
    finally:
        agent.kill()
        await reading


def _read_lines(
    stdout: object, lines: asyncio.Queue[bytes], loop: asyncio.AbstractEventLoop
) -> None:
    for line in stdout:  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(lines.put_nowait, line)


def _state(pid: int) -> str:
    """The process state letter from /proc (T: stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def test_a_schedule_replays_from_its_seed_and_heals_everything(
    cluster: FaultCluster,
) -> None:
    async def run(seed: int) -> list[tuple[str, str]]:
        events = Events()
        nemeses = [
            partition_clients(events, cluster, 0),
            partition_clients(events, cluster, 1, Mode.DROP),
            delay_clients(events, cluster, 0, 0.01),
        ]
        await run_schedule(nemeses, seed=seed, duration=1.5, interval=0.1)
        assert not any(n.active for n in nemeses)
        assert {cluster.proxies.mode(link) for link in cluster.proxies.names()} == {
            (Mode.PASS, 0.0)
        }
        return [(e.nemesis, e.action) for e in events.events]

    first = await run(7)
    again = await run(7)
    assert first[: min(len(first), len(again)) - 3] == again[: min(len(first), len(again)) - 3]
    assert any(action == "start" for _, action in first)
    assert first != await run(8)


async def test_a_replica_whose_clock_runs_ahead_closes_a_vote_early(
    cluster: FaultCluster, namespace: str
) -> None:
    """Replica 1, ten minutes ahead, finds a 2-minute vote past its deadline at once; its
    timers close it (Accord trusts each replica's clock for deadlines)."""
    events = Events()
    skew = ClockSkew(events, cluster, replica=1, offset=600)
    await skew.start()
    try:
        async with pinned(cluster, namespace, cluster.direct_addresses()[0], 10) as c:
            vote = await c.votes.propose("ship?", ["yes", "no"], voters=["a", "b"],
                                         voting_period=120)  # fmt: skip
            decision = await c.votes.wait(vote.id, timeout=30)
            assert decision.decided_by == votes_pb2.DECIDED_BY_DEADLINE
            assert time.time() < vote.spec.deadline.ToSeconds()  # by the host's clock: early
    finally:
        await skew.stop()
    assert cluster.clock_file(1).read_text() == "0.0"
    assert [(e.action, e.target) for e in events.events] == [
        ("start", "replica-1 +600s"),
        ("stop", "replica-1 +600s"),
    ]


async def test_a_watch_on_a_replica_cut_off_silently_resumes_on_the_other(
    cluster: FaultCluster, namespace: str
) -> None:
    """Regression: the client's channels, like the replica's etcd channel before them,
    waited gRPC's 60 s ping timeout on a silent connection, so a watch whose replica was
    blackholed heard nothing for over a minute; the client now gives a silent connection
    up after its 10 s keepalive plus a 5 s ping timeout and resumes on the other replica.
    Each replica's client link is cut in turn: one of the two is the watch's."""
    async with (
        make_client(cluster.client_addresses(), namespace) as watcher,
        make_client(cluster.direct_addresses(), namespace) as writer,
    ):
        watch = watcher.kv.watch("w/", prefix=True)
        await watch.start()
        for replica in range(len(cluster.replicas)):
            nemesis = partition_clients(Events(), cluster, replica=replica, mode=Mode.BLACKHOLE)
            await nemesis.start()
            written = await writer.kv.put(f"w/{replica}", "seen")
            event = await asyncio.wait_for(anext(watch), 45)  # ~15 s expected, 60+ before
            assert event.kv.key == f"w/{replica}" and event.revision == written.revision
            await nemesis.stop()
        await watch.aclose()
