"""The lease workload (issue 16, workload 6): an agent paused past its lease's TTL loses
everything attached to the lease, and is told so when it resumes.

The agent runs in its own process (`python -m tests.faults.workloads.leases ADDRESSES
NAMESPACE TTL`) so it can be frozen. It grants a lease, takes two locks under it, sets
its presence in a session and writes two keys attached to it, then prints what it holds
(one JSON line). The test freezes it (SIGSTOP) until the lease is gone (a nemesis may
kill a replica meanwhile), checks from another agent that everything attached went with
it, resumes it (SIGCONT) and sends "check": the agent waits for its client to report the
lease lost, then tries what a resumed agent would (a fenced write with its grant, a
write on the lease, a keep-alive, its presence) and prints what each raised.

`lost_everything` (what other agents see) and `told` (what the agent was told) are the
checker: each returns the problems it found.

Error handling: the agent reports each call's error class name and reason, never a
traceback; a call that succeeds is reported as "ok", which the checker flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from accord.client import AccordError, AsyncClient, FencedError, LeaseNotFoundError

LOCKS = ("lease-lock-a", "lease-lock-b")
KEYS = ("attached/one", "attached/two")
SESSION = "lease-room"
DOC = "fenced-doc"


@dataclass(frozen=True)
class Holdings:
    """What the agent held under its lease, as it printed at start."""

    lease: int
    tokens: dict[str, int]
    presence: int

    @staticmethod
    def parse(line: str) -> Holdings:
        row = json.loads(line)
        return Holdings(int(row["lease"]), dict(row["tokens"]), int(row["presence"]))


async def lost_everything(observer: AsyncClient, held: Holdings, ttl: int) -> list[str]:
    """From another agent, once the lease is gone: its locks can be taken (with newer
    tokens), its keys and its presence are gone. Takes the locks for the observer."""
    problems = []
    lease = await observer.leases.grant(ttl=ttl * 10)
    for name, old in held.tokens.items():
        grant = await observer.locks.try_acquire(name, lease)
        if grant is None:
            problems.append(f"lock {name} still held after the lease ended")
        elif grant.token <= old:
            problems.append(f"lock {name} granted token {grant.token} <= the lost {old}")
    for key in KEYS:
        if await observer.kv.get(key) is not None:
            problems.append(f"key {key} outlived its lease")
    present = (await observer.sessions.read(SESSION)).presence
    if any(p.lease_id == held.lease for p in present):
        problems.append("the agent's presence outlived its lease")
    return problems


def told(report: dict[str, Any]) -> list[str]:
    """From the resumed agent's report: its client said the lease was lost (with the
    client's error type) and every later call on the lease or its grants was refused."""
    problems = []
    if report["lost"] != LeaseNotFoundError.__name__:
        problems.append(f"lease loss reported as {report['lost']}, not LeaseNotFoundError")
    expected = {
        "fenced_write": (FencedError.__name__, LeaseNotFoundError.__name__),
        "lease_write": (LeaseNotFoundError.__name__,),
        "keepalive": (LeaseNotFoundError.__name__,),
        "presence": (LeaseNotFoundError.__name__,),
    }
    for call, allowed in expected.items():
        if report["calls"][call] not in allowed:
            problems.append(f"{call} after the lease ended: {report['calls'][call]}")
    return problems


async def _outcome(call: Awaitable[object]) -> str:
    try:
        await call
    except AccordError as error:
        return type(error).__name__
    return "ok"


async def _serve(addresses: list[str], namespace: str, ttl: int) -> None:
    loop = asyncio.get_running_loop()
    async with AsyncClient(addresses, agent_id="leased-agent", namespace=namespace) as client:
        lease = await client.leases.grant(ttl=ttl)
        grants = [await client.locks.acquire(name, lease) for name in LOCKS]
        await client.sessions.open(SESSION)
        presence = await client.sessions.set_presence(SESSION, lease, {"task": "hold"})
        for key in KEYS:
            await client.kv.put(key, b"mine while I live", lease=lease)
        tokens = {g.name: g.token for g in grants}
        print(json.dumps({"lease": lease.id, "tokens": tokens, "presence": presence.client_id}))
        sys.stdout.flush()
        await loop.run_in_executor(None, sys.stdin.readline)  # "check", after the pause
        lost, why = "not told", ""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lease.lost.wait(), 30)
            lost = type(lease.lost_reason).__name__
            why = lease.lost_reason.message if lease.lost_reason else ""
        calls = {
            "fenced_write": await _outcome(client.kv.put(DOC, b"stale", fence=grants[0])),
            "lease_write": await _outcome(client.kv.put("attached/late", b"x", lease=lease.id)),
            "keepalive": await _outcome(client.leases.keepalive_once(lease.id)),
            "presence": await _outcome(client.sessions.set_presence(SESSION, lease.id, {})),
        }
        print(json.dumps({"lost": lost, "why": why, "calls": calls}), flush=True)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])))
