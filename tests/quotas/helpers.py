"""What the quota tests share: setting a namespace's overrides and waiting until both
replicas apply them, reading a namespace's etcd keys, and checking a refusal's details."""

from __future__ import annotations

from google.rpc import error_details_pb2

from accord.client import AsyncClient, QuotaExceededError, QuotaStatus
from tests.harness import Coordinator, EtcdMember, cluster_admin_token, make_client, until

ROOT = "accord"


def quota_admin(replicas: list[Coordinator], namespace: str) -> AsyncClient:
    """A client that may set quotas: under auth, the session's cluster admin."""
    token = cluster_admin_token()
    agent = "" if token else "quota-admin"
    return make_client([replicas[0].address], namespace, agent=agent, token=token)


async def set_quota(replicas: list[Coordinator], namespace: str, **limits: float) -> None:
    """Override the namespace's limits and wait until every replica has them in force."""
    async with quota_admin(replicas, namespace) as admin:
        await admin.quotas.set(**limits)  # type: ignore[arg-type]
        for replica in replicas:
            async with make_client(
                [replica.address], namespace, agent="", token=cluster_admin_token()
            ) as c:
                await until(
                    c.quotas.get,
                    lambda s: all(getattr(s.limits, k) == v for k, v in limits.items()),
                    f"{replica.name} applies {limits}",
                )


async def usage_reaches(client: AsyncClient, name: str, value: int) -> QuotaStatus:
    """Wait until the client's replica counts value of the named usage."""
    return await until(
        client.quotas.get, lambda s: getattr(s.usage, name) == value, f"usage {name} == {value}"
    )


def namespace_keys(etcd: EtcdMember, namespace: str) -> list[tuple[bytes, int]]:
    """Every etcd key of the namespace with its mod revision: equal before and after a
    refusal means nothing was written."""
    return [(k.key, k.mod_revision) for k in etcd.kvs(f"{ROOT}/ns/{namespace}/", prefix=True)]


def assert_pushback(error: QuotaExceededError, limit: str, subject_prefix: str) -> None:
    """RESOURCE_EXHAUSTED with a QuotaFailure naming limit and a RetryInfo."""
    assert error.code is not None and error.code.name == "RESOURCE_EXHAUSTED"
    assert error.reason == "QUOTA_EXCEEDED"
    failures = [d for d in error.details if isinstance(d, error_details_pb2.QuotaFailure)]
    assert len(failures) == 1 and len(failures[0].violations) == 1
    violation = failures[0].violations[0]
    assert violation.description == limit
    assert violation.subject.startswith(subject_prefix)
    assert error.limit == limit
    assert error.retry_after is not None and error.retry_after > 0
