"""The faults the KV and watch runs inject, through tests/harness processes: a replica
killed (SIGKILL) and restarted, a replica paused (SIGSTOP) and resumed (SIGCONT), an etcd
member killed and restarted. A schedule is a seeded order of these, spaced by random
quiet spells; each event is recorded with time.monotonic(), the clock the Recorder uses,
so a report puts faults and operations on one timeline.

Error handling: a process that fails to restart raises (the run is then void); every
fault is undone before the schedule returns, even when cancelled.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from dataclasses import dataclass, field

from tests.harness import Coordinator, EtcdMember


class Fault(enum.Enum):
    KILL_REPLICA = "kill+restart replica"
    PAUSE_REPLICA = "pause+resume replica"
    KILL_ETCD = "kill+restart etcd member"


@dataclass
class Schedule:
    replicas: list[Coordinator]
    etcd: list[EtcdMember]
    faults: list[Fault]
    seed: int
    # (time.monotonic(), what, target)
    events: list[tuple[float, str, str]] = field(default_factory=list)

    def _note(self, what: str, target: str) -> None:
        self.events.append((time.monotonic(), what, target))

    async def run(self) -> None:
        """Each fault in turn, after a quiet spell, each held for a second or two."""
        rng = random.Random(f"{self.seed}/faults")
        for fault in self.faults:
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            if fault is Fault.KILL_REPLICA:
                replica = rng.choice(self.replicas)
                self._note("kill", replica.name)
                replica.kill()
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                await asyncio.to_thread(replica.start)
                self._note("restarted", replica.name)
            elif fault is Fault.PAUSE_REPLICA:
                replica = rng.choice(self.replicas)
                self._note("pause", replica.name)
                replica.pause()
                try:
                    await asyncio.sleep(rng.uniform(1.0, 2.5))
                finally:
                    replica.resume()
                    self._note("resume", replica.name)
            else:
                member = rng.choice(self.etcd)
                self._note("kill", member.name)
                member.kill()
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                await asyncio.to_thread(member.start)
                self._note("restarted", member.name)
        await asyncio.sleep(0.5)

    def timeline(self, origin: float) -> str:
        return ", ".join(f"{at - origin:.1f}s {what} {target}" for at, what, target in self.events)
