"""The refusal log's writer against a real etcd: a refusal only counted (over the rate)
still gets its summary written, even when no logged refusal follows it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from accord.coordinator.auth.refusals import RefusalLog
from accord.coordinator.substrate import Substrate, calls
from accord.coordinator.substrate.errors import Unauthenticated
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.limits import Limits
from accord.coordinator.substrate.txn import read
from accord.v1 import auth_pb2
from tests.harness import EtcdMember


@pytest.fixture
async def substrate(etcd: EtcdMember) -> AsyncIterator[Substrate]:
    client = Etcd([etcd.endpoint])
    s = Substrate.over(
        client, root=f"test-{uuid.uuid4().hex[:12]}", limits=Limits(), retention_ttl=60
    )
    try:
        yield s
    finally:
        await s.close()
        await client.close()


async def logged(s: Substrate) -> list[auth_pb2.AuditEntry]:
    found = await s.etcd.range(read(s.keys.audit_prefix, prefix=True))
    return [auth_pb2.AuditEntry.FromString(kv.value) for kv in found.kvs]


async def test_a_refusal_only_counted_is_written_in_a_summary(substrate: Substrate) -> None:
    log = RefusalLog(substrate.writes, substrate.keys, rate=0.01, burst=1)  # one, then count
    log.start()
    call = calls.Call(namespace="ns", agent_id="mallory", trace_id="t", deadline=None)
    refused = Unauthenticated("no token")
    try:
        log.note(call, "/accord.v1.KV/Put", refused)  # logged
        for _ in range(100):
            if log.written == 1:
                break
            await asyncio.sleep(0.05)
        assert log.written == 1
        log.note(call, "/accord.v1.KV/Put", refused)  # over the rate: counted only
        for _ in range(100):  # the writer pauses at most 1 s between batches
            if log.written == 2:
                break
            await asyncio.sleep(0.05)
        entries = await logged(substrate)
        assert [(e.target, e.detail.split()[0]) for e in entries] == [
            ("/accord.v1.KV/Put", "UNAUTHENTICATED:"),
            ("*", "1"),
        ]
    finally:
        await log.close()
