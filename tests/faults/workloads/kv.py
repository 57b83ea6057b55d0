"""The KV register workload (issue 16, workload 1): get, put and compare-and-set on a few
keys, from several clients spread over every replica, recorded for the KvRegister model.

Each client is its own AsyncClient with its replicas in a rotated order, so first picks
differ. A client loops until told to stop, choosing a key and an operation from its own
seeded random generator:
- get (a linearizable read, the client's default: serializable=False): output
  (value or None, mod_revision or 0); the mod_revision it saw is what its next CAS on
  that key expects;
- put of a value unique to the run: output the mod_revision it committed at;
- a hasty put: one with a deadline of a few milliseconds, not resent, so that some
  writes are indeterminate whatever the faults (they may apply after the client gave up);
- CAS: a put expecting that mod_revision (0: the key absent); output ("ok", revision)
  or ("failed",) on CONDITION_FAILED, a real answer.
A write whose answer is lost (UNAVAILABLE, DEADLINE_EXCEEDED) is sent again with the same
request_id, to whichever replica the client picks, a few times: the service applies a
request_id at most once and answers a retry with the first outcome, so all the attempts
are one operation in the history; a replayed answer is counted ("replayed").

Error handling: errors reach the Recorder, which classifies them (an ambiguous write is
indeterminate; a read with no answer is left out); a write still unanswered after its
resends is indeterminate.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from accord.client import AsyncClient
from accord.client.errors import ConditionFailedError, DeadlineExceededError, UnavailableError
from accord.client.kv import Expect, WriteResult
from accord.client.retry import RetryPolicy
from tests.faults.recorder import Recorder
from tests.harness import make_client

# Attempts of one write with one request_id before it is left indeterminate.
RESENDS = 3


@dataclass(frozen=True)
class KvWorkload:
    addresses: list[str]
    namespace: str
    seed: int
    clients: int = 4
    keys: int = 3
    # Per call: a paused replica costs a caller this long before it tries another.
    timeout: float = 2.0

    def key_names(self) -> list[str]:
        return [f"reg/{k}" for k in range(self.keys)]

    def client(self, i: int, agent: str) -> AsyncClient:
        """Client i: every replica, the i-th (mod their count) first."""
        turn = i % len(self.addresses)
        ordered = self.addresses[turn:] + self.addresses[:turn]
        retry = RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.5)
        return make_client(ordered, self.namespace, agent, timeout=self.timeout, retry=retry)

    async def run(self, recorder: Recorder, stop: asyncio.Event) -> None:
        """Every client's loop, until stop is set."""
        await asyncio.gather(*(self._loop(i, recorder, stop) for i in range(self.clients)))

    async def _loop(self, i: int, recorder: Recorder, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/kv/{i}")
        keys = self.key_names()
        seen: dict[str, int] = {}  # key -> the mod_revision this client last read
        async with self.client(i, f"kv-{i}") as c:
            n = 0
            while not stop.is_set():
                key = rng.choice(keys)
                value = f"{i}.{n}".encode()
                n += 1
                roll = rng.random()
                if roll < 0.45:
                    await _get(c, i, recorder, key, seen)
                elif roll < 0.65:
                    await _put(c, i, recorder, key, value)
                elif roll < 0.7:
                    await hasty_put(c, i, recorder, key, value, rng)
                else:
                    await _cas(c, i, recorder, key, value, seen.get(key, 0))


async def _get(c: AsyncClient, i: int, recorder: Recorder, key: str, seen: dict[str, int]) -> None:
    async with recorder.op(i, ("get",), key, mutates=False) as done:
        kv = await c.kv.get(key)
        seen[key] = kv.mod_revision if kv else 0
        done.output = (kv.value, kv.mod_revision) if kv else (None, 0)


async def _put(c: AsyncClient, i: int, recorder: Recorder, key: str, value: bytes) -> None:
    async with recorder.op(i, ("put", value), key) as done:
        result = await settled(recorder, lambda rid: c.kv.put(key, value, request_id=rid))
        done.output = _revision(result)


async def hasty_put(
    c: AsyncClient, i: int, recorder: Recorder, key: str, value: bytes, rng: random.Random
) -> None:
    """A put with a deadline of a few milliseconds, never resent: often it is still in
    flight when the client gives up, and the write is indeterminate (it may apply)."""
    async with recorder.op(i, ("put", value), key) as done:
        result = await c.kv.put(key, value, timeout=rng.uniform(0.002, 0.03))
        done.output = _revision(result)


async def _cas(
    c: AsyncClient, i: int, recorder: Recorder, key: str, value: bytes, expected: int
) -> None:
    expect = Expect(mod_revision=expected) if expected else Expect(absent=True)
    async with recorder.op(i, ("cas", expected, value), key) as done:
        try:
            result = await settled(
                recorder, lambda rid: c.kv.put(key, value, expect=expect, request_id=rid)
            )
        except ConditionFailedError:
            done.output = ("failed",)
        else:
            done.output = ("ok", _revision(result))


async def settled(
    recorder: Recorder, write: Callable[[str], Awaitable[WriteResult]]
) -> WriteResult:
    """write(request_id), sent again with the same request_id after a lost answer."""
    request_id = uuid.uuid4().hex
    for attempt in range(RESENDS):
        try:
            result = await write(request_id)
        except (DeadlineExceededError, UnavailableError):
            if attempt == RESENDS - 1:
                raise
            recorder.counts["resent"] += 1
            await asyncio.sleep(0.1 * (attempt + 1))
            continue
        if result.replayed:
            recorder.counts["replayed"] += 1
        return result
    raise AssertionError("unreachable")


def _revision(result: WriteResult) -> int:
    assert result.kv is not None
    return result.kv.mod_revision
