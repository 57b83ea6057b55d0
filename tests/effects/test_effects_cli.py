"""The effect ledger's admin commands (`accord effects ls|show`, `accord runs show`) as real
subprocesses against the live replicas, in both output modes."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from typing import Any

from accord.client import AsyncClient, EffectRun, Undo
from tests.harness import Coordinator, token_args

WAIT = 20.0
RUN = "release-1.4"


async def run_cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL
    )


def argv(replicas: list[Coordinator], namespace: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accord.coordinator",
        *args,
        "--addr",
        ",".join(r.address for r in replicas),
        "--namespace",
        namespace,
        *token_args(namespace),
    ]


async def cli_json(replicas: list[Coordinator], namespace: str, *args: str) -> Any:
    done = await run_cli(argv(replicas, namespace, *args, "-o", "json"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def cli_table(replicas: list[Coordinator], namespace: str, *args: str) -> str:
    done = await run_cli(argv(replicas, namespace, *args))
    assert done.returncode == 0, done.stderr
    return done.stdout


async def a_run(client: AsyncClient) -> list[str]:
    """Three steps: tag (succeeded, with its undo), publish (failed), announce (running
    under a live claim). Returns their keys."""
    run = EffectRun(client.effects, RUN, await client.leases.grant(ttl=60))
    async with run.step("tag", {"version": "1.4.0"}, summary="tag the release") as tag:
        tag.succeed({"sha": "abc123"}, Undo("untag", {"version": "1.4.0"}))
    async with run.step("publish", {"to": "pypi"}) as publish:
        publish.fail("403 from the registry")
    announce = run.step("announce", {"channel": "#releases"})
    call = await announce.__aenter__()  # left running: its claim lives on the lease
    return [tag.key, publish.key, call.key]


async def test_effects_ls_and_show(
    client: AsyncClient, replicas: list[Coordinator], namespace: str
) -> None:
    tag, publish, announce = await a_run(client)

    listed = await cli_json(replicas, namespace, "effects", "ls")
    assert [e["key"] for e in listed] == sorted([tag, publish, announce])  # key order
    journal = await cli_json(replicas, namespace, "effects", "ls", "--run", RUN)
    assert [e["key"] for e in journal] == [tag, publish, announce]  # the order they began
    assert [e["state"] for e in journal] == [
        "EFFECT_STATE_SUCCEEDED",
        "EFFECT_STATE_FAILED",
        "EFFECT_STATE_RUNNING",
    ]
    failed = await cli_json(replicas, namespace, "effects", "ls", "--state", "failed")
    assert [e["key"] for e in failed] == [publish]
    both = await cli_json(
        replicas, namespace, "effects", "ls", "--state", "failed", "--state", "running"
    )
    assert sorted(e["key"] for e in both) == sorted([announce, publish])
    assert await cli_json(replicas, namespace, "effects", "ls", "--run", "other") == []
    assert len(await cli_json(replicas, namespace, "effects", "ls", "--limit", "2")) == 2

    table = await cli_table(replicas, namespace, "effects", "ls", "--run", RUN)
    for text in (tag, "publish", "failed: 403 from the registry", 'ok {"sha":"abc123"}'):
        assert text in table

    shown = await cli_json(replicas, namespace, "effects", "show", tag)
    assert shown["key"] == tag and shown["run_id"] == RUN
    assert base64.b64decode(shown["intent"]["arguments"]) == b'{"version":"1.4.0"}'
    assert base64.b64decode(shown["outcome"]["success"]) == b'{"sha":"abc123"}'
    assert shown["compensation"]["tool"] == "untag"
    detail = await cli_table(replicas, namespace, "effects", "show", tag)
    for text in ("succeeded", "tag the release", '{"version":"1.4.0"}', "tester", "untag"):
        assert text in detail, detail

    missing = await run_cli(argv(replicas, namespace, "effects", "show", "no-such-key"))
    assert missing.returncode == 1 and "no-such-key" in missing.stderr


async def test_runs_show(client: AsyncClient, replicas: list[Coordinator], namespace: str) -> None:
    tag, publish, announce = await a_run(client)
    shown = await cli_json(replicas, namespace, "runs", "show", RUN)
    assert shown["run"]["run_id"] == RUN and shown["run"]["status"] == "RUN_STATUS_RUNNING"
    assert shown["run"]["resume_at"] == announce
    assert [e["key"] for e in shown["journal"]] == [tag, publish, announce]
    table = await cli_table(replicas, namespace, "runs", "show", RUN)
    for text in ("3 effects: 1 succeeded, 1 failed, 1 running", announce, "0 of 1 done"):
        assert text in table, table
    assert table.index(tag) < table.index(publish) < table.rindex(announce)
    first_two = await cli_json(replicas, namespace, "runs", "show", RUN, "--limit", "2")
    assert [e["key"] for e in first_two["journal"]] == [tag, publish]
    cut = await cli_table(replicas, namespace, "runs", "show", RUN, "--limit", "2")
    assert "the first 2; --limit for more" in cut and announce not in cut.split("journal")[1]
    missing = await run_cli(argv(replicas, namespace, "runs", "show", "no-such-run"))
    assert missing.returncode == 1 and "no-such-run" in missing.stderr
