"""Opt-in auth for the suites: with ACCORD_TEST_AUTH=required the session replicas need a
token (tests/conftest.py bootstraps a cluster admin), and every agent a test names gets
one: a principal named after the agent, minted once per session, with WRITE and PROPOSE
(ADMIN for the ADMIN_AGENTS) granted in each namespace on first use there. Tokens are
made with blocking gRPC, so make_client() and identity() stay synchronous. Off (the
default), token_for() is None and nothing here runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from accord.v1 import auth_pb2, auth_pb2_grpc

AUTH_REQUIRED = os.environ.get("ACCORD_TEST_AUTH", "") == "required"
ADMIN_PRINCIPAL = "cluster-root"  # the bootstrapped cluster admin: never a test's agent
# The agent ids tests use for a namespace admin (break locks, cancel others' votes); the
# CLI calls as "admin" too.
ADMIN_AGENTS = frozenset({"admin"})
CLI_AGENT = "admin"
GRANTED = (auth_pb2.ROLE_WRITE, auth_pb2.ROLE_PROPOSE)
PROPAGATION_SECONDS = 10.0


def bootstrap_admin(etcd_endpoint: str) -> str:
    """`accord auth bootstrap` in etcd (default root): the cluster admin's token."""
    made = subprocess.run(
        [sys.executable, "-m", "accord.coordinator", "auth", "bootstrap", "--etcd",
         etcd_endpoint, "--principal", ADMIN_PRINCIPAL, "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret: str = json.loads(made.stdout)["secret"]
    return secret


@dataclass
class _Credentials:
    addresses: list[str]
    admin_token: str
    tokens: dict[str, str] = field(default_factory=dict)  # agent -> secret
    granted: set[tuple[str, str]] = field(default_factory=set)  # (namespace, agent)
    stubs: dict[str, auth_pb2_grpc.AuthStub] = field(default_factory=dict)

    def stub(self, address: str) -> auth_pb2_grpc.AuthStub:
        if address not in self.stubs:
            self.stubs[address] = auth_pb2_grpc.AuthStub(grpc.insecure_channel(address))
        return self.stubs[address]

    def admin_call(self, namespace: str, method: str, request: object) -> Any:
        """The first answer from a replica that is up (tests stop and pause replicas)."""
        md = (("accord-namespace", namespace), ("authorization", f"Bearer {self.admin_token}"))
        last: grpc.RpcError | None = None
        for address in self.addresses:
            try:
                return getattr(self.stub(address), method)(request, metadata=md, timeout=5)
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last = e
        assert last is not None
        raise last

    def token(self, namespace: str, agent: str) -> str:
        if agent not in self.tokens:
            made: auth_pb2.CreateTokenResponse = self.admin_call(
                namespace, "CreateToken", auth_pb2.CreateTokenRequest(principal=agent)
            )
            self.tokens[agent] = made.secret
        if (namespace, agent) not in self.granted:
            roles = (auth_pb2.ROLE_ADMIN,) if agent in ADMIN_AGENTS else GRANTED
            for role in roles:
                grant = auth_pb2.GrantRoleRequest(principal=agent, role=role)
                self.admin_call(namespace, "GrantRole", grant)
            self._seen_everywhere(
                namespace, agent, lambda me: set(roles) <= set(_roles(me, namespace))
            )
            self.granted.add((namespace, agent))
        return self.tokens[agent]

    def grant_labels(self, namespace: str, agent: str, labels: Mapping[str, str]) -> None:
        self.token(namespace, agent)
        for key, value in labels.items():
            grant = auth_pb2.GrantLabelRequest(principal=agent, key=key, value=value)
            self.admin_call(namespace, "GrantLabel", grant)
        self._seen_everywhere(
            namespace, agent, lambda me: labels.items() <= _labels(me, namespace).items()
        )

    def _seen_everywhere(
        self, namespace: str, agent: str, done: Callable[[auth_pb2.Principal], bool]
    ) -> None:
        """Until every running replica's whoami for agent's token says done (each follows
        etcd by a watch); a replica that is down or paused loads it when it is back."""
        md = (
            ("accord-namespace", namespace),
            ("accord-agent-id", agent),
            ("authorization", f"Bearer {self.tokens[agent]}"),
        )
        for address in self.addresses:
            deadline = time.monotonic() + PROPAGATION_SECONDS
            while True:
                try:
                    me = self.stub(address).WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md, timeout=2)
                except grpc.RpcError as e:
                    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        break
                    if e.code() != grpc.StatusCode.UNAUTHENTICATED:  # token not seen yet
                        raise
                else:
                    if done(me.principal):
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{address} did not see {agent}'s grants in {namespace}")
                time.sleep(0.02)


def _roles(principal: auth_pb2.Principal, namespace: str) -> list[int]:
    return list(principal.roles[namespace].roles) if namespace in principal.roles else []


def _labels(principal: auth_pb2.Principal, namespace: str) -> dict[str, str]:
    held = principal.labels[namespace].labels if namespace in principal.labels else {}
    return dict(held)


_session: dict[str, _Credentials] = {}  # "": this session's, once enabled


def enable_auth(addresses: list[str], admin_token: str) -> None:
    """Called once by the session `replicas` fixture when AUTH_REQUIRED."""
    _session[""] = _Credentials(list(addresses), admin_token)


def wait_auth_ready(timeout: float = 30.0) -> None:
    """Under auth, until every replica has its copy of the credentials loaded again (after
    a test restarted etcd or a replica, calls are UNAVAILABLE meanwhile); otherwise
    nothing."""
    if not AUTH_REQUIRED or "" not in _session:
        return
    credentials = _session[""]
    md = (("authorization", f"Bearer {credentials.admin_token}"),)
    for address in credentials.addresses:
        deadline = time.monotonic() + timeout
        while True:
            try:
                credentials.stub(address).WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md, timeout=2)
                break
            except grpc.RpcError as e:
                retriable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if e.code() not in retriable or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


def token_for(namespace: str, agent: str) -> str | None:
    """The token agent uses in namespace under ACCORD_TEST_AUTH=required; otherwise None."""
    if not AUTH_REQUIRED:
        return None
    assert "" in _session, "the session `replicas` fixture enables auth first"
    return _session[""].token(namespace, agent)


def cluster_admin_token() -> str | None:
    """Under auth, the session cluster admin's token (for what only a cluster admin may
    do, such as setting quotas); otherwise None."""
    if not AUTH_REQUIRED:
        return None
    assert "" in _session, "the session `replicas` fixture enables auth first"
    return _session[""].admin_token


def own_cluster_token(
    etcd_endpoint: str, addresses: list[str], namespace: str, agent: str
) -> str | None:
    """Under auth, agent's token for replicas over an etcd of a test's own (whose first
    cluster admin this bootstraps); otherwise None."""
    if not AUTH_REQUIRED:
        return None
    return _Credentials(addresses, bootstrap_admin(etcd_endpoint)).token(namespace, agent)


def grant_labels(namespace: str, agent: str, labels: Mapping[str, str]) -> None:
    """Under auth, an admin grants agent the lease labels (a lease may carry only
    granted ones) and every running replica has seen them; otherwise nothing."""
    if AUTH_REQUIRED and labels:
        assert "" in _session, "the session `replicas` fixture enables auth first"
        _session[""].grant_labels(namespace, agent, labels)


def token_env(namespace: str, agent: str = CLI_AGENT) -> dict[str, str]:
    """Extra environment for a subprocess calling as agent (by default an `accord ...`
    command, which then calls as the namespace admin): under auth, ACCORD_TOKEN;
    otherwise nothing."""
    token = token_for(namespace, agent)
    return {} if token is None else {"ACCORD_TOKEN": token}


def token_args(namespace: str) -> list[str]:
    """`--token SECRET` for an `accord ...` command, which then calls as the namespace
    admin, under auth; otherwise nothing."""
    token = token_for(namespace, CLI_AGENT)
    return [] if token is None else ["--token", token]
