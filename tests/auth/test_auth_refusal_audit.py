"""Calls refused on authorization grounds are in the audit log (who they claimed to be,
from where, which method, why), written a moment after the refusal by the replica that
refused; a flood of refusals costs a bounded number of entries, the rest counted in a
summary entry. Sockets refused by the y-websocket port are logged the same way. Nothing
of what the refused calls asked for is written."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accord.client import (
    AsyncClient,
    AuditEntry,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
)
from accord.coordinator.auth import refusals
from tests.auth.conftest import AuthCluster, Mint, unique
from tests.harness import make_client, until


async def refusals_since(admin: AsyncClient, started_ns: int) -> list[AuditEntry]:
    """Refusal entries logged since started_ns (the log pages newest first)."""
    found: list[AuditEntry] = []
    token = ""
    while True:
        page = await admin.auth.audit(1000, page_token=token)
        for entry in page:
            if entry.at.ToNanoseconds() < started_ns:
                return found
            if entry.action == refusals.REFUSED:
                found.append(entry)
        if not page.next_page_token:
            return found
        token = page.next_page_token


async def test_a_refused_call_is_audited_with_who_what_and_where(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    started = time.time_ns()
    reader = unique("reader")
    before = auth_cluster.stored(namespace)
    async with make_client(
        auth_cluster.addresses, namespace, agent="", token=await mint(reader, Role.READ)
    ) as c:
        try:
            await c.kv.put("not-yours", b"x")
            raise AssertionError("a reader's Put was served")
        except PermissionDeniedError:
            pass

    async def logged() -> list[AuditEntry]:
        return [e for e in await refusals_since(admin, started) if e.principal == reader]

    [entry] = await until(logged, lambda found: len(found) == 1, "the refusal logged", 10)
    assert (entry.namespace, entry.agent_id, entry.target) == (
        namespace,
        reader,
        "/accord.v1.KV/Put",
    )
    assert entry.detail.startswith("PERMISSION_DENIED") and "WRITE" in entry.detail
    assert entry.peer.startswith("ipv4:127.0.0.1:") and entry.trace_id
    assert auth_cluster.stored(namespace) == before  # the Put itself wrote nothing


async def test_a_flood_of_refusals_writes_a_bounded_number_of_entries(
    auth_cluster: AuthCluster, admin: AsyncClient, namespace: str
) -> None:
    started = time.time_ns()
    flood = 600
    before = auth_cluster.stored(namespace)
    stranger = make_client(  # one call per put: each refused call is one refusal
        auth_cluster.addresses[:1],
        namespace,
        agent="mallory",
        token="acc1.AAAAAAAAAAAAAAAA.bad",
        batching=False,
    )
    began = time.monotonic()
    async with stranger as c:

        async def attempt() -> None:
            try:
                await c.kv.put("k", b"x")
                raise AssertionError("served without a valid token")
            except UnauthenticatedError:
                pass

        for _ in range(flood // 50):
            await asyncio.gather(*(attempt() for _ in range(50)))
    elapsed = time.monotonic() - began

    def counted(entries: list[AuditEntry]) -> int:
        """Refusals accounted for: one per entry of ours, n per summary of n."""
        ours = sum(1 for e in entries if e.namespace == namespace)
        summarised = sum(int(e.detail.split()[0]) for e in entries if e.target == "*")
        return ours + summarised

    entries = await until(
        lambda: refusals_since(admin, started),
        lambda found: counted(found) >= flood,
        "every refusal logged or counted",
        20,
    )
    ours = [e for e in entries if e.namespace == namespace]
    bound = 100 + 20 * (elapsed + 1)  # the documented burst and rate per replica
    assert len(ours) <= bound, (len(ours), bound)
    assert any(e.target == "*" for e in entries)  # the rest were counted, not dropped
    assert all(e.agent_id == "mallory" and "bad" not in e.detail for e in ours)
    assert auth_cluster.stored(namespace) == before


async def test_a_refused_y_websocket_socket_is_audited(
    auth_cluster: AuthCluster, admin: AsyncClient, namespace: str
) -> None:
    started = time.time_ns()
    address = f"{auth_cluster.replicas[1].ws_url}/{namespace}/doc?agent=mallory&token=garbage"
    socket = await connect(address, open_timeout=10)
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(10):
            while True:
                await socket.recv()

    async def logged() -> list[AuditEntry]:
        return [e for e in await refusals_since(admin, started) if e.namespace == namespace]

    [entry] = await until(logged, lambda found: len(found) == 1, "the socket's refusal", 10)
    assert (entry.target, entry.agent_id) == ("y-websocket connect", "mallory")
    assert entry.detail.startswith("UNAUTHENTICATED") and "garbage" not in entry.detail
    assert entry.peer.startswith("ipv4:127.0.0.1:")
