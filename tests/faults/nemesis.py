"""Nemeses: the faults a fault run injects and heals, composable, each recording what it did.

Every nemesis has a name, `start()` (inject) and `stop()` (heal), both idempotent, and
notes each action in a shared `Events` log with time.monotonic() (the clock the history
recorder uses, so a report puts faults and operations on one timeline):
- KillProcess: SIGKILL a replica (or any harness Process), restart it on heal; by default
  one of the cluster's replicas at random, never the last one running;
- PauseProcess: SIGSTOP, SIGCONT on heal: a replica (a stalled VM, a GC pause) or an agent
  process (tests.harness Process, e.g. one running tests/harness/agent_process.py);
- KillEtcdMember: SIGKILL an etcd member, restart it on heal; only while the members left
  running keep a quorum unless told `allow_quorum_loss` (then it is skipped, and says so);
- ClockSkew: move one replica's vote clock (deadlines, timers) by some seconds, through
  the test-only offset file its clock reads (coordinator/substrate/clock.py);
- LinkFault: set proxy links (tests.faults.proxy) to BLACKHOLE, DROP or a delay, PASS on
  heal; `partition_from_etcd` cuts a replica off some or all etcd members,
  `partition_clients` cuts the clients off a replica, `delay_etcd` slows a replica's links.

`run_schedule(nemeses, seed, duration, interval)` toggles randomly chosen nemeses (one
seeded random sequence, so a seed replays the same faults) and heals them all at the end;
`heal_all()` heals whatever is still injected.

Error handling: a process that fails to restart raises from `stop()` (the run is broken,
not the system under test: the caller should stop); an injection that would break a rule
(the last replica, the quorum) is skipped and logged as "skip", never forced.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.cluster import FaultCluster
from tests.faults.proxy import Mode
from tests.harness import Process


@dataclass(frozen=True)
class Event:
    """One nemesis action: began and ended are time.monotonic() around it."""

    began: float
    ended: float
    nemesis: str
    action: str  # "start", "stop" or "skip"
    target: str

    def as_json(self) -> dict[str, object]:
        return {
            "began": self.began,
            "ended": self.ended,
            "nemesis": self.nemesis,
            "action": self.action,
            "target": self.target,
        }


@dataclass
class Events:
    events: list[Event] = field(default_factory=list)

    def note(self, began: float, nemesis: str, action: str, target: str) -> None:
        self.events.append(Event(began, time.monotonic(), nemesis, action, target))

    def count(self, action: str = "start") -> int:
        return sum(1 for e in self.events if e.action == action)


class Nemesis:
    """A fault that can be injected (start) and healed (stop). Subclasses define
    `_inject() -> target or None (skipped)` and `_heal()`."""

    def __init__(self, name: str, events: Events) -> None:
        self.name = name
        self.events = events
        self.active = False
        self.target = ""

    async def start(self) -> bool:
        """Inject, unless injected already or a rule forbids it now; whether it did."""
        if self.active:
            return False
        began = time.monotonic()
        target = await self._inject()
        if target is None:
            self.events.note(began, self.name, "skip", "")
            return False
        self.active, self.target = True, target
        self.events.note(began, self.name, "start", target)
        return True

    async def stop(self) -> None:
        if not self.active:
            return
        began = time.monotonic()
        await self._heal()
        self.active = False
        self.events.note(began, self.name, "stop", self.target)

    async def _inject(self) -> str | None:
        raise NotImplementedError

    async def _heal(self) -> None:
        raise NotImplementedError


class KillProcess(Nemesis):
    """SIGKILL one of `candidates` (chosen at each start among those running), only while
    more than `keep` of `among` (by default the candidates) run; restart it (and wait
    until it serves) on heal."""

    def __init__(
        self,
        name: str,
        events: Events,
        candidates: Sequence[Process],
        *,
        keep: int = 1,
        among: Sequence[Process] | None = None,
        rng: random.Random | None = None,
        before_restart: Callable[[Process], None] | None = None,
    ) -> None:
        super().__init__(name, events)
        self.candidates = list(candidates)
        self.keep = keep
        self.among = list(among or candidates)  # whom `keep` counts
        self.rng = rng or random.Random(0)
        self.killed: Process | None = None
        # What must hold for the process to start again (a replica needs etcd).
        self.before_restart = before_restart

    async def _inject(self) -> str | None:
        running = [p for p in self.candidates if p.running()]
        if not running or sum(p.running() for p in self.among) <= self.keep:
            return None
        self.killed = self.rng.choice(running)
        await asyncio.to_thread(self.killed.kill)
        return self.killed.name

    async def _heal(self) -> None:
        assert self.killed is not None
        if not self.killed.running():
            if self.before_restart is not None:
                self.before_restart(self.killed)
            await asyncio.to_thread(self.killed.start)  # type: ignore[attr-defined]
        self.killed = None


class PauseProcess(Nemesis):
    """SIGSTOP a process; SIGCONT on heal (if it still runs: another nemesis may have
    killed it meanwhile)."""

    def __init__(self, name: str, events: Events, process: Process) -> None:
        super().__init__(name, events)
        self.process = process

    async def _inject(self) -> str | None:
        if not self.process.running():
            return None
        self.process.pause()
        deadline = time.monotonic() + 10
        while not _stopped(self.process.pid):  # SIGSTOP lands asynchronously
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.process.name} did not stop")
            await asyncio.sleep(0.01)
        return self.process.name

    async def _heal(self) -> None:
        if self.process.running():
            self.process.resume()


class KillEtcdMember(KillProcess):
    """SIGKILL an etcd member (at random among those running), keeping a quorum running
    unless allow_quorum_loss; restart it on heal (it rejoins from its data dir)."""

    def __init__(
        self,
        events: Events,
        cluster: FaultCluster,
        *,
        member: int | None = None,
        allow_quorum_loss: bool = False,
        rng: random.Random | None = None,
        name: str = "",
    ) -> None:
        chosen = cluster.members if member is None else [cluster.members[member]]
        keep = 0 if allow_quorum_loss else cluster.quorum()
        super().__init__(
            name or "kill-etcd", events, chosen, keep=keep, among=cluster.members, rng=rng
        )


class LinkFault(Nemesis):
    """Set some proxy links to a mode (and delay); PASS with no delay on heal."""

    def __init__(
        self,
        name: str,
        events: Events,
        cluster: FaultCluster,
        links: Sequence[str],
        mode: Mode,
        delay: float = 0.0,
    ) -> None:
        super().__init__(name, events)
        if not cluster.proxied:
            raise ValueError("link faults need a cluster started with proxied=True")
        self.proxies = cluster.proxies
        self.links = list(links)
        self.mode, self.delay = mode, delay

    async def _inject(self) -> str | None:
        for link in self.links:
            self.proxies.set(link, self.mode, self.delay)
        what = f"{self.mode.value} {self.delay:g}s" if self.delay else self.mode.value
        return f"{what}: {', '.join(self.links)}"

    async def _heal(self) -> None:
        for link in self.links:
            self.proxies.set(link, Mode.PASS, 0.0)


class ClockSkew(Nemesis):
    """Move a replica's vote clock (deadlines, timers) by offset seconds, without touching
    the host's: the replica reads its offset file (coordinator/substrate/clock.py) at most
    every 50 ms. Heal sets it back to 0."""

    def __init__(self, events: Events, cluster: FaultCluster, replica: int, offset: float) -> None:
        super().__init__(f"clock-skew-replica-{replica}", events)
        self.file = cluster.clock_file(replica)
        self.offset = offset
        self.replica = cluster.replicas[replica].name

    def _write(self, offset: float) -> None:
        ahead = self.file.with_suffix(".next")
        ahead.write_text(repr(offset))
        ahead.replace(self.file)  # whole, never half-written

    async def _inject(self) -> str | None:
        self._write(self.offset)
        await asyncio.sleep(0.1)  # read again by then (every 50 ms, on its next use)
        return f"{self.replica} {self.offset:+g}s"

    async def _heal(self) -> None:
        self._write(0.0)
        await asyncio.sleep(0.1)


def _stopped(pid: int) -> bool:
    """Whether /proc says the process is stopped by a signal (state T)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone: nothing of it runs
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def kill_replica(
    events: Events, cluster: FaultCluster, replica: int | None = None, seed: int = 0
) -> KillProcess:
    """SIGKILL a replica (the given one, or one at random keeping one running); restart."""
    chosen = cluster.replicas if replica is None else [cluster.replicas[replica]]
    name = "kill-replica" if replica is None else f"kill-replica-{replica}"

    def reach_etcd(process: Process) -> None:
        """A replica starts only once it reaches etcd (else it exits, and the run breaks
        in the nemesis, not the checker): when the one restarting is cut off every etcd
        member, its links are healed first, and the log says so."""
        if not cluster.proxied:
            return
        i = cluster.replicas.index(process)  # type: ignore[arg-type]
        links = [cluster.etcd_link(i, m) for m in range(len(cluster.members))]
        if all(cluster.proxies.mode(link)[0] != Mode.PASS for link in links):
            began = time.monotonic()
            for link in links:
                cluster.proxies.set(link, Mode.PASS, 0.0)
            events.note(began, name, "heal-etcd-links-to-restart", process.name)

    return KillProcess(name, events, chosen, keep=1 if replica is None else 0,
                       rng=random.Random(seed), before_restart=reach_etcd)  # fmt: skip


def pause_replica(events: Events, cluster: FaultCluster, replica: int) -> PauseProcess:
    return PauseProcess(f"pause-replica-{replica}", events, cluster.replicas[replica])


def partition_from_etcd(
    events: Events,
    cluster: FaultCluster,
    replica: int,
    members: Sequence[int] | None = None,
    mode: Mode = Mode.BLACKHOLE,
) -> LinkFault:
    """Cut replica off the given etcd members (all by default)."""
    chosen = range(len(cluster.members)) if members is None else members
    links = [cluster.etcd_link(replica, m) for m in chosen]
    return LinkFault(f"partition-replica-{replica}-etcd", events, cluster, links, mode)


def partition_clients(
    events: Events, cluster: FaultCluster, replica: int, mode: Mode = Mode.BLACKHOLE
) -> LinkFault:
    """Cut every client off one replica."""
    link = cluster.client_link(replica)
    return LinkFault(f"partition-clients-replica-{replica}", events, cluster, [link], mode)


def delay_etcd(events: Events, cluster: FaultCluster, replica: int, seconds: float) -> LinkFault:
    """Delay every byte between a replica and each etcd member by seconds (each way)."""
    links = [cluster.etcd_link(replica, m) for m in range(len(cluster.members))]
    return LinkFault(f"delay-replica-{replica}-etcd", events, cluster, links, Mode.PASS, seconds)


def delay_clients(events: Events, cluster: FaultCluster, replica: int, seconds: float) -> LinkFault:
    link = cluster.client_link(replica)
    return LinkFault(f"delay-clients-replica-{replica}", events, cluster, [link], Mode.PASS,
                     seconds)  # fmt: skip


async def heal_all(nemeses: Sequence[Nemesis]) -> None:
    """Heal every nemesis still injected, the latest first; every heal is tried."""
    failures: list[BaseException] = []
    for nemesis in reversed(nemeses):
        try:
            await nemesis.stop()
        except Exception as error:
            failures.append(error)
    if failures:
        raise failures[0]


async def run_schedule(
    nemeses: Sequence[Nemesis],
    seed: int,
    duration: float,
    interval: float,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """For duration seconds: every interval (jittered 0.5-1.5x) pick a nemesis at random
    and toggle it (inject if healed, heal if injected); then heal them all. The choices
    come from one Random(seed); the moments depend on how long each action took."""
    rng = random.Random(seed)
    deadline = time.monotonic() + duration
    try:
        while not stop():
            pause = interval * rng.uniform(0.5, 1.5)
            if time.monotonic() + pause >= deadline:
                break
            await asyncio.sleep(pause)
            nemesis = rng.choice(nemeses)
            if nemesis.active:
                await nemesis.stop()
            else:
                await nemesis.start()
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) if not stop() else 0.0)
    finally:
        await heal_all(nemeses)
