"""`accord status` with auth required: the status names every namespace that called a
replica, so only a cluster admin may see it. A namespace's own ADMIN is refused
(PERMISSION_DENIED naming the cluster-admin role), by the client and by the command,
and nothing changes in etcd; the cluster admin sees both replicas, and among their
busiest namespaces none that only refused, unauthenticated calls claimed."""

from __future__ import annotations

import asyncio
import json

import pytest

from accord.client import PermissionDeniedError, Role, UnauthenticatedError
from tests.auth.conftest import AuthCluster, Mint, accord_cli, unique
from tests.harness import make_client


async def test_only_a_cluster_admin_sees_replica_status(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    name = unique("ns-admin")
    token = await mint(name, Role.ADMIN)
    before = auth_cluster.stored()

    async with make_client(auth_cluster.addresses[:1], namespace, agent="", token=token) as c:
        with pytest.raises(PermissionDeniedError) as refused:
            await c.replicas.status()
    assert refused.value.role == "CLUSTER_ADMIN"
    assert refused.value.metadata["principal"] == name
    ghost = unique("ghost")  # a namespace only unauthenticated calls name
    async with make_client(auth_cluster.addresses[:1], ghost, agent="", token="") as c:
        with pytest.raises(UnauthenticatedError):
            await c.replicas.status()
        with pytest.raises(UnauthenticatedError):
            await c.kv.get("k")

    addr = ",".join(auth_cluster.addresses)
    done = await asyncio.to_thread(
        accord_cli, "status", "--addr", addr, "--token", token, "-o", "json"
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "needs a cluster admin" in done.stderr and name in done.stderr
    assert done.stdout == ""  # no namespace named
    assert auth_cluster.stored() == before

    seen = await asyncio.to_thread(
        accord_cli, "status", "--addr", addr, "-o", "json", "--top", "100",
        env={"ACCORD_TOKEN": auth_cluster.admin_token},
    )  # fmt: skip
    assert seen.returncode == 0, seen.stderr
    statuses = json.loads(seen.stdout)
    assert [(s["address"], s["up"]) for s in statuses] == [
        (a, True) for a in auth_cluster.addresses
    ]
    busiest = {t["namespace"] for s in statuses for t in s["status"]["top_namespaces"]}
    assert namespace in busiest and ghost not in busiest, busiest
