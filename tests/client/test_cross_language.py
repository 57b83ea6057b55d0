"""A Node.js client (@grpc/grpc-js + the .proto files) against a running replica."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.harness import REPO, Coordinator


def test_node_client_conditional_write_and_watch(
    replicas: list[Coordinator], namespace: str
) -> None:
    node_dir = REPO / "tests" / "node"
    assert shutil.which("node"), "node is needed: the README's test command installs it"
    assert (node_dir / "node_modules" / "@grpc" / "grpc-js").exists(), (
        "run `npm ci` in tests/node first (the README's test command does)"
    )
    result = subprocess.run(
        ["node", "--test", str(node_dir)],
        env={**os.environ, "ACCORD_ADDR": replicas[1].address, "ACCORD_NAMESPACE": namespace},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# pass 4" in result.stdout and "# fail 0" in result.stdout
