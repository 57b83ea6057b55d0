"""The admin CLI (`accord locks|leases|deadlocks ...`) against the live replicas: every
command runs as a real subprocess, while this test's event loop keeps the leases alive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from accord.client import AsyncClient, DeadlockError, FencedError, Grant, Lease
from tests.harness import (
    Coordinator,
    free_port,
    grant_labels,
    make_client,
    queued,
    token_args,
    token_env,
)

WAIT = 20.0  # seconds any one wait in these tests may take


class Scene:
    """Agents, leases and waits a test sets up, all torn down with it."""

    def __init__(self, replicas: list[Coordinator], namespace: str) -> None:
        self.addr = ",".join(r.address for r in replicas)
        self.namespace = namespace
        self.stack = contextlib.AsyncExitStack()

    async def agent(self, name: str) -> AsyncClient:
        addresses = self.addr.split(",")
        return await self.stack.enter_async_context(
            make_client(addresses, self.namespace, agent=name)
        )

    async def lease(self, agent: AsyncClient, **labels: str) -> Lease:
        grant_labels(self.namespace, agent.agent_id, labels)
        return await self.stack.enter_async_context(await agent.leases.grant(10, labels=labels))

    def wait(self, agent: AsyncClient, name: str, lease: Lease) -> asyncio.Task[Grant]:
        task = asyncio.create_task(agent.locks.acquire(name, lease, wait=WAIT))
        self.stack.push_async_callback(_cancel, task)
        return task

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "accord.coordinator", *args]
        argv += ["--addr", self.addr, "--namespace", self.namespace]
        return await run([*argv, *token_args(self.namespace)])

    async def json(self, *args: str) -> Any:
        done = await self.cli(*args, "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    async def table(self, *args: str) -> str:
        done = await self.cli(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout


async def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A blocking CLI run, in a thread so that keep-alives go on meanwhile."""
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )


async def _cancel(task: asyncio.Task[Grant]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


@pytest.fixture
async def scene(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> AsyncIterator[Scene]:
    scene = Scene(replicas, namespace)
    async with scene.stack:
        yield scene


async def held_with_waiters(scene: Scene, client: AsyncClient, name: str) -> tuple[Grant, Lease]:
    """alice holds name; bob, then carol, wait for it. Returns alice's grant and lease."""
    alice = await scene.agent("alice")
    lease = await scene.lease(alice)
    grant = await alice.locks.acquire(name, lease)
    for i, waiter in enumerate(["bob", "carol"]):
        agent = await scene.agent(waiter)
        scene.wait(agent, name, await scene.lease(agent))
        await queued(client, name, i + 1, WAIT)
    return grant, lease


async def test_locks_ls(scene: Scene, client: AsyncClient) -> None:
    grant, _ = await held_with_waiters(scene, client, "repo/main")

    [state] = await scene.json("locks", "ls")
    assert state["name"] == "repo/main"
    assert [(h["agent_id"], int(h["token"])) for h in state["holders"]] == [("alice", grant.token)]
    assert [w["agent_id"] for w in state["waiters"]] == ["bob", "carol"]
    assert [s["name"] for s in await scene.json("locks", "ls", "--prefix", "repo/")] == [
        "repo/main"
    ]
    assert await scene.json("locks", "ls", "--prefix", "other/") == []

    table = await scene.table("locks", "ls")
    row = next(line for line in table.splitlines() if "repo/main" in line)
    assert "exclusive" in row
    assert f"alice (token {grant.token})" in row
    assert row.split()[-1] == "2"  # waiting


async def test_locks_show(scene: Scene, client: AsyncClient) -> None:
    grant, lease = await held_with_waiters(scene, client, "repo/main")

    state = await scene.json("locks", "show", "repo/main")
    [holder] = state["holders"]
    assert holder["agent_id"] == "alice"
    assert int(holder["lease_id"]) == lease.id
    assert int(holder["token"]) == grant.token
    assert 0 < int(holder["lease_ttl_seconds"]) <= 10
    assert [w["agent_id"] for w in state["waiters"]] == ["bob", "carol"]
    assert int(state["waiters"][0]["token"]) > grant.token

    table = await scene.table("locks", "show", "repo/main")
    assert re.search(rf"alice\s+{lease.id}\s+{grant.token}\s+exclusive", table), table
    assert re.search(r"^\s*0\s+bob\s", table, re.MULTILINE), table
    assert re.search(r"^\s*1\s+carol\s", table, re.MULTILINE), table

    nobody = await scene.json("locks", "show", "nothing/here")
    assert (nobody["holders"], nobody["waiters"]) == ([], [])


async def test_locks_graph(scene: Scene, client: AsyncClient) -> None:
    alice, bob = await scene.agent("alice"), await scene.agent("bob")
    await alice.locks.acquire("db", await scene.lease(alice))
    scene.wait(bob, "db", await scene.lease(bob))
    await queued(client, "db", 1, WAIT)

    text = await scene.table("locks", "graph")
    # Nodes are leases (the detector's view), named by their agents.
    assert re.fullmatch(r"bob#[0-9a-f]+ -> alice#[0-9a-f]+ on db \(exclusive\)", text.strip())

    dot = await scene.table("locks", "graph", "--format", "dot")
    assert dot.startswith("digraph")
    assert re.search(r'"bob#[0-9a-f]+" -> "alice#[0-9a-f]+" \[label="db"\];', dot), dot
    assert dot.rstrip().endswith("}")

    for args in (["--format", "json"], ["-o", "json"]):
        done = await scene.cli("locks", "graph", *args)
        assert done.returncode == 0, done.stderr
        [edge] = json.loads(done.stdout)
        assert (edge["waiter_agent"], edge["holder_agent"], edge["lock"]) == ("bob", "alice", "db")
        assert edge["holder_holding"] is True
        assert edge["waiter_mode"] == "LOCK_MODE_EXCLUSIVE"


async def test_locks_graph_pages(scene: Scene, client: AsyncClient) -> None:
    await held_with_waiters(scene, client, "db")
    dave = await scene.agent("dave")
    scene.wait(dave, "db", await scene.lease(dave))
    await queued(client, "db", 3, WAIT)  # 1 + 2 + 3 edges

    first = await scene.cli("locks", "graph", "--limit", "4")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.strip().splitlines()) == 4
    assert "showing 4 of 6 edges: --page-token " in first.stderr  # stdout stays the graph
    token = first.stderr.split("--page-token ")[1].split()[0]
    rest = await scene.cli("locks", "graph", "--limit", "4", "--page-token", token)
    assert rest.returncode == 0 and rest.stderr == ""
    assert len(rest.stdout.strip().splitlines()) == 2

    every = await scene.cli("locks", "graph", "--limit", "4", "--all", "-o", "json")
    assert every.returncode == 0 and every.stderr == ""
    edges = json.loads(every.stdout)
    assert sorted(e["waiter_agent"] for e in edges) == ["bob", "carol", "carol", *["dave"] * 3]


async def test_break_with_yes_fences_the_old_holder(scene: Scene) -> None:
    alice, bob = await scene.agent("alice"), await scene.agent("bob")
    grant = await alice.locks.acquire("deploy", await scene.lease(alice))
    await alice.kv.put("k", b"before", fence=grant)
    waiter = scene.wait(bob, "deploy", await scene.lease(bob))
    await queued(alice, "deploy", 1, WAIT)

    broken = await scene.json("locks", "break", "deploy", "--yes")
    assert [(b["agent_id"], int(b["token"])) for b in broken] == [("alice", grant.token)]

    with pytest.raises(FencedError):
        await alice.kv.put("k", b"late", fence=grant)
    taken = await asyncio.wait_for(waiter, WAIT)
    assert taken.token > grant.token
    await bob.kv.put("k", b"bob's", fence=taken)
    current = await bob.kv.get("k")
    assert current is not None and current.value == b"bob's"


async def test_break_without_yes_and_no_tty_refuses(scene: Scene) -> None:
    alice = await scene.agent("alice")
    grant = await alice.locks.acquire("guarded", await scene.lease(alice))

    refused = await scene.cli("locks", "break", "guarded")
    assert refused.returncode != 0
    assert "--yes" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert refused.stdout == ""
    state = await scene.json("locks", "show", "guarded")
    assert [int(h["token"]) for h in state["holders"]] == [grant.token]
    await alice.kv.put("k", b"still mine", fence=grant)

    table = await scene.table("locks", "break", "guarded", "--yes")
    assert "broke guarded" in table
    assert re.search(rf"alice\s+\d+\s+{grant.token}", table), table
    assert "nothing broken" in await scene.table("locks", "break", "guarded", "--yes")


def in_terminal(argv: list[str], answer: bytes) -> tuple[int, str]:
    """Run argv on a pseudo-terminal, typing answer at its [y/N] prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen, answered, deadline = b"", False, time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                seen += os.read(master, 4096)
            except OSError:  # EIO: the command exited, closing the terminal
                break
            if not answered and b"[y/N]" in seen:
                os.write(master, answer)
                answered = True
        return proc.wait(WAIT), seen.decode(errors="replace")
    finally:
        proc.kill()
        os.close(master)


async def test_break_asks_on_a_terminal(scene: Scene) -> None:
    alice = await scene.agent("alice")
    grant = await alice.locks.acquire("asked", await scene.lease(alice))
    argv = [sys.executable, "-m", "accord.coordinator", "locks", "break", "asked"]
    argv += ["--addr", scene.addr, "--namespace", scene.namespace, *token_args(scene.namespace)]

    code, seen = await asyncio.to_thread(in_terminal, argv, b"n\r")
    assert code != 0
    assert f"Break 'asked', held by alice (token {grant.token})?" in seen
    await alice.kv.put("k", b"still mine", fence=grant)

    code, seen = await asyncio.to_thread(in_terminal, argv, b"y\r")
    assert code == 0, seen
    assert "broke asked" in seen
    with pytest.raises(FencedError):
        await alice.kv.put("k", b"late", fence=grant)


async def test_leases_ls(scene: Scene) -> None:
    alice = await scene.agent("alice")
    lease = await scene.lease(alice, role="reviewer")
    await alice.locks.acquire("review/42", lease)

    [info] = await scene.json("leases", "ls")
    assert int(info["id"]) == lease.id
    assert info["agent_id"] == "alice"
    assert info["labels"] == {"role": "reviewer"}
    assert info["locks"] == ["review/42"]
    assert int(info["granted_ttl_seconds"]) == 10
    assert int(info.get("ttl_seconds", 0)) == 0  # listing asks etcd nothing per lease

    table = await scene.table("leases", "ls")
    row = next(line for line in table.splitlines() if str(lease.id) in line)
    for text in ("alice", "10s", "role=reviewer", "review/42"):
        assert text in row, table


async def test_deadlocks_ls(scene: Scene, client: AsyncClient) -> None:
    a, b = await scene.agent("alice"), await scene.agent("bob")
    lease_a, lease_b = await scene.lease(a), await scene.lease(b)
    await a.locks.acquire("L1", lease_a)
    await b.locks.acquire("L2", lease_b)
    a_waits = scene.wait(a, "L2", lease_a)
    await queued(client, "L2", 1, WAIT)
    b_waits = scene.wait(b, "L1", lease_b)  # closes the cycle

    done, _ = await asyncio.wait_for(
        asyncio.wait({a_waits, b_waits}, return_when=asyncio.FIRST_COMPLETED), WAIT
    )
    [victim] = done
    with pytest.raises(DeadlockError):
        victim.result()
    survivor = b_waits if victim is a_waits else a_waits
    assert not survivor.done()
    victim_agent, victim_held = ("alice", "L1") if victim is a_waits else ("bob", "L2")
    await (a if victim is a_waits else b).locks.release(
        victim_held, lease_a if victim is a_waits else lease_b
    )
    await asyncio.wait_for(survivor, WAIT)  # the rest of the cycle proceeds

    listed = await scene.json("deadlocks", "ls")
    [deadlock] = listed["deadlocks"]
    assert listed["next_page_token"] == ""  # the only page
    assert deadlock["victim_agent"] == victim_agent
    assert deadlock["victim_lock"] == ("L2" if victim_agent == "alice" else "L1")
    cycle = {(e["waiter_agent"], e["holder_agent"], e["lock"]) for e in deadlock["cycle"]}
    assert cycle == {("alice", "bob", "L2"), ("bob", "alice", "L1")}
    assert deadlock["policy"]
    assert len((await scene.json("deadlocks", "ls", "--limit", "1"))["deadlocks"]) == 1

    table = await scene.table("deadlocks", "ls")
    assert deadlock["id"] in table
    assert re.search(rf"{victim_agent}#[0-9a-f]+ on {deadlock['victim_lock']}", table), table


COMMANDS = [
    ["locks", "ls"],
    ["locks", "show", "x"],
    ["locks", "graph"],
    ["locks", "break", "x", "--yes"],
    ["leases", "ls"],
    ["deadlocks", "ls"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c[:2]))
async def test_unreachable_service_exits_3(command: list[str]) -> None:
    addr = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "accord.coordinator", *command, "--addr", addr, "-o", "json"]
    done = await run(argv)
    assert done.returncode == 3
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"accord: cannot reach the Accord service at {addr}: ")


async def test_env_vars_and_a_dead_first_address(scene: Scene, replicas: list[Coordinator]) -> None:
    alice = await scene.agent("alice")
    await alice.locks.acquire("env", await scene.lease(alice))
    addr = f"127.0.0.1:{free_port()},{replicas[1].address}"  # the first one is down
    env = {**os.environ, "ACCORD_ADDR": addr, "ACCORD_NAMESPACE": scene.namespace}
    env |= token_env(scene.namespace)
    argv = [sys.executable, "-m", "accord.coordinator", "locks", "ls", "-o", "json"]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=WAIT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert [s["name"] for s in json.loads(done.stdout)] == ["env"]


async def test_accord_error_exits_1(scene: Scene) -> None:
    done = await scene.cli("locks", "show", "")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("accord: ")
    assert "Traceback" not in done.stderr
