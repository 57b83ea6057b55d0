"""The Node clients authenticate too: the @grpc/grpc-js test client sends ACCORD_TOKEN as
`authorization: Bearer`, and an unmodified Yjs app (yjs + y-websocket) passes it as the
`token` URL parameter; both work against replicas that require a token, and the gRPC one
is refused without it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

import pytest

from accord.client import Role
from tests.auth.conftest import AuthCluster, Mint
from tests.harness import REPO, make_client, until

NODE_DIR = REPO / "tests" / "node"
NODE_AGENT = "node-agent"  # the agent kv.test.mjs calls as


@pytest.fixture(autouse=True)
def _node_installed() -> None:
    assert shutil.which("node"), "node is needed: the README's test command installs it"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists(), "run `npm ci` in tests/node"


def run_node_tests(
    cluster: AuthCluster, namespace: str, token: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ACCORD_TOKEN"}
    env.update(ACCORD_ADDR=cluster.addresses[0], ACCORD_NAMESPACE=namespace)
    if token:
        env["ACCORD_TOKEN"] = token
    return subprocess.run(
        ["node", "--test", str(NODE_DIR)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_node_grpc_client_sends_its_token(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    token = await mint(f"node-runtime-{namespace}", Role.WRITE, agents=(NODE_AGENT,))
    served = await asyncio.to_thread(run_node_tests, auth_cluster, namespace, token)
    assert served.returncode == 0, served.stdout + served.stderr
    assert "# fail 0" in served.stdout
    refused = await asyncio.to_thread(run_node_tests, auth_cluster, namespace, "")
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stdout + refused.stderr


async def test_a_yjs_app_joins_with_its_token(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    token = await mint(f"yjs-app-{namespace}", Role.WRITE)
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "ysession.mjs"),
        f"{auth_cluster.replicas[1].ws_url}/{namespace}",
        "plan",
        "",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "ACCORD_TOKEN": token},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            while json.loads(await proc.stdout.readline()).get("event") != "synced":
                pass
            proc.stdin.write(b'{"id":1,"cmd":"insert","index":0,"text":"from node"}\n')
            while json.loads(await proc.stdout.readline()).get("id") != 1:
                pass
        async with make_client(auth_cluster.addresses, namespace, agent="", token=token) as c:

            async def text() -> object:
                return (await c.sessions.read("plan")).json.get("text")

            await until(text, lambda t: t == "from node", "the app's edit in the session")
    finally:
        proc.kill()
        await proc.wait()
