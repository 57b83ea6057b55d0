"""Auth required, used as intended: a writer puts and gets on both replicas and its
writes are signed with its principal; the cluster admin mints tokens and grants roles;
whoami says who a token names; a service principal acts as the agents it hosts."""

from __future__ import annotations

from accord.client import Role
from tests.auth.conftest import ADMIN, AuthCluster, Mint, accord_cli, unique
from tests.harness import make_client


async def test_writer_puts_and_gets_on_both_replicas(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    writer = unique("writer")
    token = await mint(writer, Role.WRITE)
    for i, address in enumerate(auth_cluster.addresses):
        async with make_client([address], namespace, agent="", token=token) as c:
            await c.kv.put(f"k{i}", b"v")
            found = await c.kv.get(f"k{i}")
            assert found is not None and found.value == b"v"
            assert found.written_by.agent_id == writer  # the principal itself, by default
            assert found.written_by.principal == writer


async def test_whoami_names_the_principal_its_roles_and_token(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    reader = unique("reader")
    token = await mint(reader, Role.READ)
    async with make_client(auth_cluster.addresses, namespace, agent="", token=token) as c:
        me = await c.auth.whoami()
    assert me.auth_required
    assert me.principal.name == reader and me.agent_id == reader
    assert list(me.principal.roles[namespace].roles) == [Role.READ]
    assert me.token_id and token.split(".")[1] == me.token_id
    assert me.namespace == namespace


async def test_admin_grants_and_revokes_roles_and_lists_principals(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    name = unique("grantee")
    token = await mint(name)
    async with make_client(
        auth_cluster.addresses, namespace, agent="", token=auth_cluster.admin_token
    ) as admin:
        granted = await admin.auth.grant(name, Role.PROPOSE)
        assert list(granted.roles[namespace].roles) == [Role.PROPOSE]
        found = {p.name: p for p in await admin.auth.principals()}
        assert found[ADMIN].cluster_admin
        assert [t.id for t in found[name].tokens] == [token.split(".")[1]]
        assert not any(t.id == "" for p in found.values() for t in p.tokens)
        revoked = await admin.auth.revoke(name, Role.PROPOSE)
        assert namespace not in revoked.roles


async def test_a_service_principal_acts_as_the_agents_it_hosts(
    auth_cluster: AuthCluster, mint: Mint, namespace: str
) -> None:
    runtime = unique("runtime")
    token = await mint(runtime, Role.WRITE, agents=("agent-a", "agent-b"))
    async with make_client(auth_cluster.addresses, namespace, "agent-b", token=token) as c:
        await c.kv.put("hosted", b"1")
        found = await c.kv.get("hosted")
        assert found is not None and found.written_by.agent_id == "agent-b"
        assert found.written_by.principal == runtime  # who really wrote it


def test_cli_whoami_with_a_token(auth_cluster: AuthCluster) -> None:
    shown = accord_cli(
        "auth", "whoami", "--addr", auth_cluster.addresses[1], "-o", "json",
        env={"ACCORD_TOKEN": auth_cluster.admin_token},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f'"name": "{ADMIN}"' in shown.stdout and '"cluster_admin": true' in shown.stdout


def test_bootstrap_refuses_a_second_cluster_admin_without_force(auth_cluster: AuthCluster) -> None:
    again = accord_cli(
        "auth", "bootstrap", "--etcd", auth_cluster.etcd.endpoint, "--root", auth_cluster.root,
        "--principal", unique("second"),
    )  # fmt: skip
    assert again.returncode == 1
    assert ADMIN in again.stderr and "--force" in again.stderr
