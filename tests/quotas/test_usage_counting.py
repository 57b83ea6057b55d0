"""Who counts usage: with quotas off a replica follows no namespace's writes and
Quotas.Get reads the namespace from etcd at one revision; with quotas on, a namespace that
first appears while the replicas run is counted exactly (keys and bytes after overwrites
and deletes, sessions, leases, open votes), by its own prev_kv watches from the revision it
was first seen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from accord.client import AsyncClient
from tests.harness import Coordinator, EtcdMember, make_client, start_coordinator


@pytest.fixture(scope="module")
def no_quotas(
    replicas: list[Coordinator], etcd: EtcdMember, workdir: Path
) -> Iterator[Coordinator]:
    """A replica serving with --no-quotas over the session etcd (after the session
    replicas, so that under auth its credentials exist)."""
    replica = start_coordinator(workdir, "no-quotas", [etcd.endpoint], ["--no-quotas"], ws=False)
    yield replica
    replica.terminate()


async def _write_and_delete(client: AsyncClient) -> int:
    """Overwrites and a delete; one ~2,000-byte key remains. Returns the last revision."""
    await client.kv.put("k", b"x" * 100)
    await client.kv.put("k", b"x" * 3_000)
    await client.kv.put("k", b"x" * 2_000)
    await client.kv.put("gone", b"x" * 5_000)
    return (await client.kv.delete("gone")).revision


async def test_with_quotas_off_usage_is_read_when_asked(
    no_quotas: Coordinator, namespace: str
) -> None:
    assert "quota usage not counted: quotas are off" in no_quotas.log.read_text()
    async with make_client([no_quotas.address], namespace) as client:
        last = await _write_and_delete(client)
        await client.leases.grant(ttl=30, keepalive=False)
        # Exact at once (no watch lag to wait for): read from etcd at the answer's revision.
        status = await client.quotas.get()
    assert status.usage.revision > last
    assert status.usage.keys == 1
    assert 2_000 < status.usage.bytes < 2_300
    assert status.usage.leases == 1
