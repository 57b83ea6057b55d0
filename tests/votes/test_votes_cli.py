"""The votes admin commands (`accord votes ls|show|watch`) as real subprocesses against
the live replicas, in both output modes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from accord.client import AsyncClient, Rule
from tests.harness import Coordinator, free_port, make_client, token_args

WAIT = 20.0  # seconds any one wait in these tests may take


async def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A blocking CLI run, in a thread so that this test's clients carry on meanwhile."""
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )


class Votes:
    """Agents of one test's namespace, and the CLI pointed at it."""

    def __init__(self, replicas: list[Coordinator], namespace: str) -> None:
        self.addr = ",".join(r.address for r in replicas)
        self.namespace = namespace
        self.stack = contextlib.AsyncExitStack()

    async def agent(self, name: str) -> AsyncClient:
        return await self.stack.enter_async_context(
            make_client(self.addr.split(","), self.namespace, agent=name)
        )

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "accord.coordinator",
            *args,
            "--addr",
            self.addr,
            "--namespace",
            self.namespace,
            *token_args(self.namespace),
        ]

    async def json(self, *args: str) -> Any:
        done = await run(self.argv(*args, "-o", "json"))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    async def table(self, *args: str) -> str:
        done = await run(self.argv(*args))
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
async def votes(replicas: list[Coordinator], namespace: str) -> AsyncIterator[Votes]:
    scene = Votes(replicas, namespace)
    async with scene.stack:
        yield scene


LONG = "Should we migrate every service to the new deployment pipeline before the freeze " * 2


async def three_votes(votes: Votes) -> dict[str, str]:
    """An open vote (one ballot), an approved one, a cancelled one; ids by state."""
    lead, alice, bob = [await votes.agent(n) for n in ("lead", "alice", "bob")]
    voters = {"alice": 3.0, "bob": 1.0, "carol": 1.0}
    approved = await lead.votes.propose("Ship 4.2?", ["yes", "no"], voters=voters, voting_period=60)
    await bob.votes.cast(approved.id, "no", rationale="flaky tests " * 20, confidence=0.4)
    await alice.votes.cast(approved.id, "yes", rationale="all green", confidence=0.9)
    cancelled = await lead.votes.propose(
        "Rename the repo?", ["yes"], voters=voters, voting_period=60
    )
    await lead.votes.cancel(cancelled.id, "not now")
    opened = await lead.votes.propose(
        LONG, ["yes", "no"], voters=voters, voting_period=600, rule=Rule.fraction(2, 3)
    )
    await bob.votes.cast(opened.id, "yes")
    return {"approved": approved.id, "cancelled": cancelled.id, "open": opened.id}


async def test_votes_ls(votes: Votes) -> None:
    ids = await three_votes(votes)

    listed = await votes.json("votes", "ls")
    newest_first = [ids["open"], ids["cancelled"], ids["approved"]]
    assert [v["id"] for v in listed] == newest_first
    revisions = [int(v["created_revision"]) for v in listed]
    assert revisions == sorted(revisions, reverse=True)
    assert [v["status"] for v in listed] == [
        "VOTE_STATUS_OPEN",
        "VOTE_STATUS_DECIDED",
        "VOTE_STATUS_DECIDED",
    ]
    assert listed[2]["decision"]["outcome"] == "OUTCOME_APPROVED"
    assert [v["id"] for v in await votes.json("votes", "ls", "--status", "open")] == [ids["open"]]
    assert [v["id"] for v in await votes.json("votes", "ls", "--status", "decided")] == [
        ids["cancelled"],
        ids["approved"],
    ]

    table = await votes.table("votes", "ls")
    rows = {vid: next(line for line in table.splitlines() if vid in line) for vid in ids.values()}
    assert re.search(r"\bopen\b", rows[ids["open"]]), table
    assert "Should we migrate every service" in rows[ids["open"]]
    assert LONG.strip() not in table and "..." in rows[ids["open"]]  # truncated
    assert "(in " in rows[ids["open"]]  # deadline ahead
    assert "APPROVED 'yes'" in rows[ids["approved"]]
    assert "2/3" in rows[ids["approved"]]  # two of three voters cast a ballot
    assert "CANCELLED" in rows[ids["cancelled"]]
    assert table.index(ids["open"]) < table.index(ids["cancelled"]) < table.index(ids["approved"])
    assert ids["approved"] not in await votes.table("votes", "ls", "--status", "open")


async def test_votes_ls_counts_the_ballots_of_an_open_vote(votes: Votes) -> None:
    lead, alice, bob = [await votes.agent(n) for n in ("lead", "alice", "bob")]
    vote = await lead.votes.propose(
        "Tag 4.3?",
        ["yes", "no"],
        voters=["alice", "bob", "carol"],
        veto_holders=["lead"],  # outside the electorate: its ballot is no vote
        rule=Rule.unanimous(),
        voting_period=600,
    )
    await alice.votes.cast(vote.id, "yes")
    await bob.votes.cast(vote.id, "yes")
    await lead.votes.cast(vote.id)  # a veto holder's "no veto"
    assert "2 of 3 voters" in await votes.table("votes", "show", vote.id)

    [listed] = await votes.json("votes", "ls")
    assert listed["status"] == "VOTE_STATUS_OPEN"
    assert listed["ballots_cast"] == 2 and len(listed["voters"]) == 3
    row = next(line for line in (await votes.table("votes", "ls")).splitlines() if vote.id in line)
    assert re.search(r"\s2/3\s", row), row


async def test_votes_show(votes: Votes) -> None:
    ids = await three_votes(votes)

    shown = await votes.json("votes", "show", ids["approved"])
    assert shown["id"] == ids["approved"]
    assert [(b["voter"], b["choice"]) for b in shown["ballots"]] == [
        ("bob", "no"),
        ("alice", "yes"),
    ]
    assert shown["decision"]["outcome"] == "OUTCOME_APPROVED"
    assert shown["decision"]["option"] == "yes"
    assert shown["tally"]["participated"] == 2

    table = await votes.table("votes", "show", ids["approved"])
    assert f"vote {ids['approved']}: APPROVED 'yes'" in table
    assert "more than half of the weight cast" in table
    assert "3 voters, weight 5" in table
    assert re.search(r"alice\s+yes\s+3\s+0\.9\s", table), table
    assert re.search(r"bob\s+no\s+1\s+0\.4\s", table), table
    assert "all green" in table
    assert "flaky tests flaky tests" in table and ("flaky tests " * 20).strip() not in table
    assert re.search(r"yes\s+1\s+3\s+0\.9", table), table  # tally: option, voters, weight
    assert "certain before the deadline" in table
    assert "2 of 3 voters (weight 4 of 5), 0 abstaining" in table
    assert "APPROVED 'yes': 1 voter, weight 3" in " ".join(table.split())  # the explanation

    opened = await votes.table("votes", "show", ids["open"])
    assert "at least 2/3 of the weight cast" in opened
    assert "explanation" not in opened  # no decision yet
    cancelled = await votes.table("votes", "show", ids["cancelled"])
    assert "CANCELLED" in cancelled and "lead: not now" in cancelled


async def read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
    assert line, "the watch ended early"
    return line.decode().rstrip("\n")


@pytest.mark.parametrize("output", ["table", "json"])
async def test_votes_watch(votes: Votes, output: str) -> None:
    lead, alice, bob = [await votes.agent(n) for n in ("lead", "alice", "bob")]
    vote = await lead.votes.propose(
        "Merge #12?",
        ["yes", "no"],
        voters=["alice", "bob"],
        rule=Rule.unanimous(),
        voting_period=60,
    )
    await alice.votes.cast(vote.id, "yes", rationale="looks right")
    proc = await asyncio.create_subprocess_exec(
        *votes.argv("votes", "watch", vote.id, "-o", output),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        state = await read_line(proc)  # the watch is on: later ballots reach it
        await bob.votes.cast(vote.id, "yes", confidence=0.8)
        ballot, decision = await read_line(proc), await read_line(proc)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout == b""  # nothing after the decision

    if output == "json":
        first, second, last = json.loads(state), json.loads(ballot), json.loads(decision)
        assert list(first) == ["state"] and first["state"]["id"] == vote.id
        assert [b["voter"] for b in first["state"]["ballots"]] == ["alice"]
        assert list(second) == ["ballot"] and second["ballot"]["voter"] == "bob"
        assert second["ballot"]["confidence"] == 0.8
        assert list(last) == ["decision"]
        assert last["decision"]["outcome"] == "OUTCOME_APPROVED"
        assert last["decision"]["decided_by"] == "DECIDED_BY_ALL_CAST"
    else:
        assert state.startswith("state") and f"{vote.id}: open, 1/2 voted" in state
        assert "Merge #12?" in state
        assert ballot.startswith("ballot") and "bob -> yes" in ballot and "confidence 0.8" in ballot
        assert decision.startswith("decision") and "APPROVED 'yes' (every ballot cast" in decision


async def test_votes_watch_of_a_decided_vote_exits_at_once(votes: Votes) -> None:
    ids = await three_votes(votes)
    done = await run(votes.argv("votes", "watch", ids["cancelled"], "-o", "json"))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [next(iter(e)) for e in events] == ["state", "decision"]
    assert events[1]["decision"]["outcome"] == "OUTCOME_CANCELLED"


async def test_unknown_vote_exits_1(votes: Votes) -> None:
    for command in (["votes", "show", "nope"], ["votes", "watch", "nope"]):
        done = await run(votes.argv(*command))
        assert done.returncode == 1, done
        assert done.stdout == ""
        assert done.stderr.startswith("accord: ") and "nope" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [["votes", "ls"], ["votes", "show", "x"], ["votes", "watch", "x"]],
    ids=lambda c: "-".join(c[:2]),
)
@pytest.mark.parametrize("output", ["table", "json"])
async def test_unreachable_service_exits_3(command: list[str], output: str) -> None:
    addr = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "accord.coordinator", *command, "--addr", addr, "-o", output]
    done = await run(argv)
    assert done.returncode == 3
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"accord: cannot reach the Accord service at {addr}: ")
