"""With auth required: only a cluster admin sets a namespace's quotas (a namespace ADMIN
raising its own quota would defeat it), and the per-agent rate is per principal."""

from __future__ import annotations

import pytest

from accord.client import (
    AsyncClient,
    PermissionDeniedError,
    QuotaExceededError,
    RetryPolicy,
    Role,
)
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.harness import make_client, until
from tests.quotas.helpers import assert_pushback


async def test_only_a_cluster_admin_sets_quotas(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    owner = unique("owner")
    token = await mint(owner, Role.ADMIN)
    before = auth_cluster.stored()
    async with make_client(auth_cluster.addresses, namespace, agent="", token=token) as own:
        with pytest.raises(PermissionDeniedError) as refused:
            await own.quotas.set(keys=10**9)
        assert refused.value.role == "CLUSTER_ADMIN"
        assert auth_cluster.stored() == before  # no override written
        assert (await own.quotas.get()).limits.keys == 100_000  # reading needs READ only
    stored = await admin.quotas.set(keys=5)
    assert stored.keys == 5
    assert [kv.key for kv in auth_cluster.etcd.kvs(f"{auth_cluster.root}/quotas/{namespace}")]


async def test_the_agent_rate_is_per_principal(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    hasty, calm = unique("hasty"), unique("calm")  # minted first: minting calls WhoAmI
    # hasty is a service principal hosting two agents: they share its bucket.
    hasty_token = await mint(hasty, Role.READ, agents=("h-1", "h-2"))
    calm_token = await mint(calm, Role.READ)
    await admin.quotas.set(agent_requests_per_second=0.5, burst_seconds=2.0)
    for address in auth_cluster.addresses:
        async with make_client([address], namespace, agent="", token=auth_cluster.admin_token) as c:
            await until(
                c.quotas.get,
                lambda s: s.limits.agent_requests_per_second == 0.5,
                "the override applies",
            )
    address = auth_cluster.addresses[0]
    async with (
        make_client([address], namespace, agent="h-1", token=hasty_token) as first,
        make_client([address], namespace, agent="h-2", token=hasty_token) as sibling,
        make_client([address], namespace, agent="", token=calm_token) as other,
    ):
        for client in (first, sibling, other):
            client._transport.retry = RetryPolicy(max_attempts=1)
        await first.kv.get("k")
        with pytest.raises(QuotaExceededError) as refused:
            await sibling.kv.get("k")  # another agent, the same principal's bucket
        assert_pushback(refused.value, "agent_requests_per_second", f"principal:{namespace}/")
        assert refused.value.subject == f"principal:{namespace}/{hasty}"
        await other.kv.get("k")
