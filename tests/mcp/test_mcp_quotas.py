"""A quota refusal through MCP says which quota, for whom, and when to come back, and
nothing was written."""

from __future__ import annotations

from tests.harness import Coordinator, EtcdMember, cluster_admin_token, make_client, token_for
from tests.mcp.harness import stdio_session, structured
from tests.quotas.helpers import namespace_keys, set_quota, usage_reaches


async def test_a_quota_refusal_says_when_to_come_back(
    replicas: list[Coordinator], etcd: EtcdMember, namespace: str
) -> None:
    await set_quota(replicas, namespace, keys=1)
    addresses, token = [r.address for r in replicas], token_for(namespace, "alice") or ""
    async with stdio_session(addresses, namespace, token=token, agent="alice") as mcp:
        first = await mcp.call_tool("accord_memory_put", {"key": "one", "value": "v"})
        assert not first.is_error, structured(first)
        # Each replica counts keys from its own watch: the second put may land on either.
        admin = cluster_admin_token()
        for replica in replicas:
            async with make_client(
                [replica.address], namespace, agent="" if admin else "counter", token=admin
            ) as c:
                await usage_reaches(c, "keys", 1)
        before = namespace_keys(etcd, namespace)
        second = await mcp.call_tool("accord_memory_put", {"key": "two", "value": "v"})
        assert second.is_error
        refusal = structured(second)
        assert refusal["reason"] == "QUOTA_EXCEEDED"
        assert refusal["quota"] == {"limit": "keys", "subject": f"namespace:{namespace}"}
        assert refusal["retry_after_seconds"] > 0
        assert "retry_after_seconds" in refusal["what_to_do"]
        assert namespace_keys(etcd, namespace) == before
