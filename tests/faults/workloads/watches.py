"""The watch workload (issue 16, workload 4): writers put unique values under a prefix
while watchers follow it, resuming on other replicas; the validator checks that every
acknowledged write was seen exactly once, in revision order, across resumes.

Writers are the KV workload's puts (a lost answer resent with the same request_id, and
one in twenty a hasty put with a deadline of milliseconds: see kv.py), recorded by a
Recorder: its ok operations are the acknowledged writes, with the revision each committed
at; its indeterminate ones the writes that may or may not have happened. Each watcher
is an AsyncClient over every replica (rotated, its own first) and follows the prefix from
the revision its first watch registered at (before any write).
The client resumes a failed stream on another replica by itself; in addition a watcher
closes its watch every few tenths of a second (at an event on a revision boundary: writes
batched by group commit share a revision) and opens a new one, from the closed one's
resume_revision, through the next replica's client: an explicit resume, counted.

The run ends with one last acknowledged write (the end marker); each watcher reads until
it has seen its revision.

validate(): for each watcher, problems (empty: valid):
- an event out of revision order (writes batched by group commit share a revision), or
  a write seen twice (a duplicate);
- an event that is no write of the run (a phantom), or an acknowledged write seen at
  another revision than the one it was acknowledged at;
- an acknowledged write not seen (a gap);
- an indeterminate write seen by one watcher and not by another, or at other revisions
  (it happened or not: every watcher must agree).

Error handling: a watcher that cannot reach the end marker in time is a problem reported
by validate (it saw less than everything), not an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

from accord.client import AsyncClient
from accord.client.kv import Watch
from accord.client.retry import RetryPolicy
from tests.faults.recorder import Recorder
from tests.faults.workloads.kv import hasty_put, settled
from tests.harness import make_client
from tests.linearizability import INDETERMINATE

PREFIX = "w/"
END_KEY = PREFIX + "end"
# (key, value): a write of the run; values are unique, so it names one write.
Write = tuple[str, bytes]


@dataclass
class Watcher:
    """What one watcher saw: (key, value, revision) in delivery order."""

    index: int
    events: list[tuple[str, bytes, int]] = field(default_factory=list)
    start_revision: int = 0
    resumes: int = 0  # explicit: closed and opened again on the next replica

    @property
    def last_revision(self) -> int:
        return self.events[-1][2] if self.events else 0


@dataclass
class WatchRun:
    watchers: list[Watcher]
    acknowledged: dict[Write, int]
    indeterminate: set[Write]
    end_revision: int
    caught_up: bool


@dataclass(frozen=True)
class WatchWorkload:
    addresses: list[str]
    namespace: str
    seed: int
    writers: int = 3
    watchers: int = 2
    keys: int = 4
    timeout: float = 2.0
    # An explicit resume at the first event after this many seconds, on average.
    resume_every: float = 0.25

    def _client(self, i: int, agent: str) -> AsyncClient:
        turn = i % len(self.addresses)
        ordered = self.addresses[turn:] + self.addresses[:turn]
        retry = RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.5)
        return make_client(ordered, self.namespace, agent, timeout=self.timeout, retry=retry)

    async def run(
        self, recorder: Recorder, stop: asyncio.Event, catch_up: float = 30.0
    ) -> WatchRun:
        """Watch, write until stop is set, write the end marker, and wait (at most
        catch_up seconds) for every watcher to see it."""
        clients = [self._client(i, "watcher") for i in range(len(self.addresses))]
        watchers = [Watcher(i) for i in range(self.watchers)]
        try:
            started = [asyncio.get_running_loop().create_future() for _ in watchers]
            tasks = [
                asyncio.create_task(self._follow(w, clients, ready))
                for w, ready in zip(watchers, started, strict=True)
            ]
            await asyncio.gather(*started)
            await asyncio.gather(*(self._write(i, recorder, stop) for i in range(self.writers)))
            end_revision = await self._end_marker(recorder)
            deadline = time.monotonic() + catch_up
            while any(w.last_revision < end_revision for w in watchers):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            caught_up = all(w.last_revision >= end_revision for w in watchers)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            for c in clients:
                await c.close()
        acknowledged: dict[Write, int] = {}
        indeterminate: set[Write] = set()
        for op in recorder.operations:
            key = op.partition
            assert isinstance(key, str) and isinstance(op.input, tuple)
            write = (key, op.input[1])
            if op.output is INDETERMINATE:
                indeterminate.add(write)
            else:
                assert isinstance(op.output, int)
                acknowledged[write] = op.output
        return WatchRun(watchers, acknowledged, indeterminate, end_revision, caught_up)

    async def _follow(
        self, watcher: Watcher, clients: list[AsyncClient], ready: asyncio.Future[None]
    ) -> None:
        rng = random.Random(f"{self.seed}/watch/{watcher.index}")
        turn = watcher.index % len(clients)
        watch: Watch = clients[turn].kv.watch(PREFIX, prefix=True)
        watcher.start_revision = await watch.start()
        ready.set_result(None)
        while True:
            # Not too often: a watch opened at a past revision waits for etcd's catch-up
            # loop (every 100 ms).
            until = time.monotonic() + rng.uniform(0, 2 * self.resume_every)
            async for event in watch:
                watcher.events.append((event.kv.key, event.kv.value, event.revision))
                # On a revision boundary only: a watch closed inside one group commit's
                # revision resumes at it and delivers its earlier events again (kv.Watch).
                if time.monotonic() > until and watch.resume_revision > event.revision:
                    break
            resume_at = watch.resume_revision
            await watch.aclose()
            turn = (turn + 1) % len(clients)
            watch = clients[turn].kv.watch(PREFIX, prefix=True, start_revision=resume_at)
            watcher.resumes += 1

    async def _write(self, i: int, recorder: Recorder, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/writer/{i}")
        async with self._client(i, f"writer-{i}") as c:
            n = 0
            while not stop.is_set():
                key = f"{PREFIX}{rng.randrange(self.keys)}"
                value = f"{i}.{n}".encode()
                n += 1
                if rng.random() < 0.05:
                    await hasty_put(c, i, recorder, key, value, rng)
                    continue
                async with recorder.op(i, ("put", value), key) as done:
                    result = await settled(
                        recorder,
                        lambda rid, key=key, value=value: c.kv.put(key, value, request_id=rid),
                    )
                    assert result.kv is not None
                    done.output = result.kv.mod_revision

    async def _end_marker(self, recorder: Recorder) -> int:
        """The last write, retried until acknowledged (the faults are over by now)."""
        async with self._client(0, "writer-end") as c:
            for _ in range(20):
                before = len(recorder.operations)
                async with recorder.op(-1, ("put", b"end"), END_KEY) as done:
                    result = await settled(
                        recorder, lambda rid: c.kv.put(END_KEY, b"end", request_id=rid)
                    )
                    assert result.kv is not None
                    done.output = result.kv.mod_revision
                if len(recorder.operations) > before and isinstance(
                    recorder.operations[-1].output, int
                ):
                    return recorder.operations[-1].output
                await asyncio.sleep(0.5)
        raise AssertionError("the end marker was never acknowledged")


def validate(run: WatchRun) -> list[str]:
    """Every problem with what the watchers saw (see the module docstring)."""
    problems: list[str] = []
    if not run.caught_up:
        problems.append(f"a watcher never reached the end marker (revision {run.end_revision})")
    maybe_seen: list[dict[Write, int]] = []
    for w in run.watchers:
        name = f"watcher {w.index}"
        seen: dict[Write, int] = {}
        previous = 0
        for key, value, revision in w.events:
            write = (key, value)
            if revision < previous:  # equal: one group commit's writes share a revision
                problems.append(f"{name}: {write} at revision {revision} after {previous}")
            previous = max(previous, revision)
            if write in seen:
                problems.append(f"{name}: {write} seen twice (revisions {seen[write]}, {revision})")
                continue
            seen[write] = revision
            if write in run.acknowledged:
                if run.acknowledged[write] != revision:
                    problems.append(
                        f"{name}: {write} seen at revision {revision}, acknowledged at "
                        f"{run.acknowledged[write]}"
                    )
            elif write not in run.indeterminate:
                problems.append(f"{name}: {write} at revision {revision} is no write of the run")
        for write, revision in sorted(run.acknowledged.items(), key=lambda kv: kv[1]):
            # (past its last event: reported above as not caught up)
            if write not in seen and w.start_revision <= revision <= w.last_revision:
                problems.append(f"{name}: missed {write}, acknowledged at revision {revision}")
        maybe_seen.append({wr: r for wr, r in seen.items() if wr in run.indeterminate})
    for w, maybe in zip(run.watchers[1:], maybe_seen[1:], strict=True):
        if maybe != maybe_seen[0]:
            problems.append(
                f"watchers 0 and {w.index} disagree on the indeterminate writes that "
                f"happened: {sorted(maybe_seen[0].items())} vs {sorted(maybe.items())}"
            )
    return problems
