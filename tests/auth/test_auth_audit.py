"""The audit log: every administrative act (bootstrap, tokens minted and revoked, roles
granted and taken back, locks broken) is logged in the act's own etcd transaction, with
who, what, when and from where; only a cluster admin reads it, newest first, a page at a
time (`accord audit ls`). Calls refused on authorization grounds are logged as well, a
moment later and at a bounded rate per replica, outside every namespace's keys (what
they asked to change stays unchanged: tests/auth/test_auth_refusals.py)."""

from __future__ import annotations

import json

from accord.client import AsyncClient, AuditEntry, Role
from tests.auth.conftest import ADMIN, AuthCluster, Mint, accord_cli, unique
from tests.harness import make_client


async def everything(admin: AsyncClient) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    token = ""
    while True:
        page = await admin.auth.audit(1000, page_token=token)
        entries += page
        if not page.next_page_token:
            return entries
        token = page.next_page_token


async def test_admin_acts_are_logged_with_who_what_when_and_where(
    auth_cluster: AuthCluster, admin: AsyncClient, namespace: str
) -> None:
    name = unique("audited")
    made = await admin.auth.create_token(name)
    await admin.auth.grant(name, Role.WRITE)
    await admin.auth.revoke_token(made.info.id)
    newest = [e for e in await admin.auth.audit(100) if e.action != "Refused"][:3]
    assert [(e.action, e.target) for e in newest] == [
        ("RevokeToken", name),
        ("GrantRole", name),
        ("CreateToken", name),
    ]
    for entry in newest:
        assert (entry.principal, entry.agent_id, entry.namespace) == (ADMIN, ADMIN, namespace)
        assert entry.peer.startswith("ipv4:127.0.0.1:") and entry.at.seconds > 0
    assert made.info.id in newest[0].detail and "WRITE" in newest[1].detail
    assert made.secret not in str(newest)  # a secret is never logged

    bootstrap = [e for e in await everything(admin) if e.action == "Bootstrap"]
    assert [(e.principal, e.target) for e in bootstrap] == [("bootstrap", ADMIN)]


async def test_breaking_a_lock_is_logged(
    auth_cluster: AuthCluster, admin: AsyncClient, mint: Mint, namespace: str
) -> None:
    holder, breaker = unique("holder"), unique("breaker")
    holder_token = await mint(holder, Role.WRITE)
    breaker_token = await mint(breaker, Role.ADMIN)
    async with (
        make_client(auth_cluster.addresses, namespace, agent="", token=holder_token) as h,
        await h.leases.grant(ttl=30) as lease,
    ):
        await h.locks.acquire("doc", lease)
        async with make_client(
            auth_cluster.addresses, namespace, agent="", token=breaker_token
        ) as b:
            assert [e.agent_id for e in await b.locks.break_lock("doc")] == [holder]
    [entry] = [e for e in await admin.auth.audit(20) if e.action == "Break"][:1]
    assert (entry.principal, entry.namespace, entry.target) == (breaker, namespace, "doc")
    assert holder in entry.detail


async def test_pages_go_back_in_time(admin: AsyncClient) -> None:
    for _ in range(3):
        await admin.auth.grant(unique("paged"), Role.READ)
    first = await admin.auth.audit(2)
    second = await admin.auth.audit(2, page_token=first.next_page_token)
    assert len(first) == len(second) == 2 and first.next_page_token
    assert first[-1].at.ToNanoseconds() >= second[0].at.ToNanoseconds()
    assert {e.target for e in first}.isdisjoint({e.target for e in second})


def test_cli_audit_ls(auth_cluster: AuthCluster) -> None:
    shown = accord_cli(
        "audit", "ls", "--limit", "5", "--addr", auth_cluster.addresses[1], "-o", "json",
        env={"ACCORD_TOKEN": auth_cluster.admin_token},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    entries = json.loads(shown.stdout)
    assert 0 < len(entries) <= 5 and all(e["action"] for e in entries)
