"""Fixtures for the auth tests: two replicas over the session's etcd that require a
token (`--auth required`, under their own --root so nothing else's keys mix in; their
y-websocket endpoints accept browser pages from ALLOWED_ORIGIN only), the
first cluster admin made by `accord auth bootstrap`, and principals each test mints
with that admin's client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from accord.client import AsyncClient, Role
from tests.harness import (
    Coordinator,
    EtcdMember,
    StoredKey,
    make_client,
    start_coordinator,
    until,
)

ADMIN = "root-admin"
ALLOWED_ORIGIN = "http://app.example"  # the one browser origin the replicas accept


def accord_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`accord ARGS...` as a user runs it; the result, whatever the exit code."""
    return subprocess.run(
        [sys.executable, "-m", "accord.coordinator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # Only the token a test passes: never one from the developer's environment.
        env={**{k: v for k, v in os.environ.items() if k != "ACCORD_TOKEN"}, **(env or {})},
    )


@dataclass(frozen=True)
class AuthCluster:
    etcd: EtcdMember
    root: str
    replicas: list[Coordinator]
    admin_token: str

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    def stored(self, namespace: str | None = None) -> list[StoredKey]:
        """Everything under this cluster's root (or one namespace of it), straight from etcd,
        but the audit log: refusals are logged there, after the fact, by design."""
        prefix = f"{self.root}/ns/{namespace}/" if namespace else f"{self.root}/"
        audit = f"{self.root}/audit/".encode()
        return [kv for kv in self.etcd.kvs(prefix, prefix=True) if not kv.key.startswith(audit)]


@pytest.fixture(scope="session")
def auth_cluster(etcd: EtcdMember, workdir: Path) -> Iterator[AuthCluster]:
    root = f"auth-{uuid.uuid4().hex[:8]}"
    made = accord_cli(
        "auth", "bootstrap", "--etcd", etcd.endpoint, "--root", root, "--principal", ADMIN,
        "-o", "json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    admin_token = json.loads(made.stdout)["secret"]
    replicas = [
        start_coordinator(
            workdir,
            f"auth-replica-{i}",
            [etcd.endpoint],
            extra_args=[
                "--auth",
                "required",
                "--root",
                root,
                "--ws-allowed-origins",
                ALLOWED_ORIGIN,
            ],
        )
        for i in range(2)
    ]
    yield AuthCluster(etcd, root, replicas, admin_token)
    for replica in replicas:
        if replica.running():
            replica.terminate()


@pytest.fixture
async def admin(auth_cluster: AuthCluster, namespace: str) -> AsyncIterator[AsyncClient]:
    """The cluster admin, in the test's namespace."""
    async with make_client(
        auth_cluster.addresses, namespace, agent="", token=auth_cluster.admin_token
    ) as c:
        yield c


Mint = Callable[..., Awaitable[str]]


@pytest.fixture
def mint(admin: AsyncClient, auth_cluster: AuthCluster, namespace: str) -> Mint:
    """mint(name, *roles, agents=(), ttl=0): a principal with roles in the test's
    namespace; returns its token once every replica's copy of the credentials has them
    (each follows etcd by a watch, so a grant reaches them a moment after it is made)."""

    async def make(name: str, *roles: Role, agents: tuple[str, ...] = (), ttl: int = 0) -> str:
        made = await admin.auth.create_token(name, agents=list(agents), ttl=ttl)
        for role in roles:
            await admin.auth.grant(name, role)
        as_agent = agents[0] if agents else ""
        await seen_everywhere(auth_cluster, namespace, made.secret, set(roles), as_agent)
        return made.secret

    return make


async def seen_everywhere(
    cluster: AuthCluster, namespace: str, token: str, roles: set[Role], agent: str = ""
) -> None:
    """Until every replica's whoami for token shows its principal with exactly roles."""
    for address in cluster.addresses:
        async with make_client([address], namespace, agent=agent, token=token) as c:

            async def held(c: AsyncClient = c) -> set[int] | None:
                me = (await c.auth.whoami()).principal
                if not me.name:
                    return None  # the replica has not seen the principal yet
                return set(me.roles[namespace].roles) if namespace in me.roles else set()

            await until(held, lambda now: now == roles, f"{roles} on {address}")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"
