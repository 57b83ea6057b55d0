"""Which role each RPC needs, and whether a principal has it.

`REQUIRED` maps every method of every Accord service, by the full name gRPC routes it
under (`/accord.v1.KV/Put`), to what it needs. The names are taken from the generated
descriptors, so a renamed or removed method fails at import, and
tests/unit/test_auth_roles.py checks that every method the contract declares is here.
A method that is not in the table is refused: authorization fails closed.

Roles are granted per namespace. ADMIN includes every other role; WRITE and PROPOSE
each include READ. A cluster admin holds every role in every namespace.

Error handling: `authorize` raises PermissionDenied naming the role that was missing and
the namespace (ErrorInfo metadata "role", "namespace", "principal"), and `check_agent`
names the agent ids the principal may act as (metadata "agents", comma-separated), so
a program or an LLM can tell what to ask for.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType, ModuleType
from typing import TypeAlias

from accord.coordinator.substrate.errors import PermissionDenied
from accord.v1 import (
    auth_pb2,
    effects_pb2,
    kv_pb2,
    leases_pb2,
    locks_pb2,
    quotas_pb2,
    records_pb2,
    replicas_pb2,
    sessions_pb2,
    votes_pb2,
)

Role: TypeAlias = auth_pb2.Role.ValueType
READ, WRITE, PROPOSE, ADMIN = (
    auth_pb2.ROLE_READ,
    auth_pb2.ROLE_WRITE,
    auth_pb2.ROLE_PROPOSE,
    auth_pb2.ROLE_ADMIN,
)
ROLES: tuple[Role, ...] = (READ, WRITE, PROPOSE, ADMIN)
_INCLUDES: Mapping[Role, frozenset[Role]] = {
    READ: frozenset({READ}),
    WRITE: frozenset({READ, WRITE}),
    PROPOSE: frozenset({READ, PROPOSE}),
    ADMIN: frozenset(ROLES),
}

# Every service a replica serves, with the module its descriptor lives in.
SERVICES: tuple[tuple[ModuleType, str], ...] = (
    (kv_pb2, "KV"),
    (leases_pb2, "Leases"),
    (locks_pb2, "Locks"),
    (sessions_pb2, "Sessions"),
    (votes_pb2, "Votes"),
    (effects_pb2, "Effects"),
    (auth_pb2, "Auth"),
    (quotas_pb2, "Quotas"),
    (replicas_pb2, "Replicas"),
)


class Need(enum.Enum):
    """What a call needs besides a valid credential."""

    READ = READ
    WRITE = WRITE
    PROPOSE = PROPOSE
    ADMIN = ADMIN  # of the call's namespace
    CLUSTER_ADMIN = "cluster admin"
    AUTHENTICATED = "any authenticated principal"


def role_name(role: Role) -> str:
    return auth_pb2.Role.Name(role).removeprefix("ROLE_")


def method_name(module: ModuleType, service: str, method: str) -> str:
    """The path gRPC routes a method under, from the generated descriptor (KeyError when
    the contract has no such method)."""
    found = module.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    return f"/{found.containing_service.full_name}/{found.name}"


def _table(
    module: ModuleType, service: str, needs: Mapping[Need, Iterable[str]]
) -> dict[str, Need]:
    table: dict[str, Need] = {}
    for need, methods in needs.items():
        for method in methods:
            name = method_name(module, service, method)
            if name in table:
                raise ValueError(f"{name} is given two rules: {table[name]} and {need}")
            table[name] = need
    return table


R, W, P, A = Need.READ, Need.WRITE, Need.PROPOSE, Need.ADMIN
REQUIRED: Mapping[str, Need] = MappingProxyType(
    {
        **_table(
            kv_pb2,
            "KV",
            {R: ["Get", "List", "Watch", "History", "Batch"], W: ["Put", "Delete", "Txn"]},
        ),
        # Revoking another agent's lease will need ADMIN once ownership is checked.
        **_table(
            leases_pb2,
            "Leases",
            {R: ["TimeToLive", "List"], W: ["Grant", "KeepAlive", "KeepAliveOnce", "Revoke"]},
        ),
        **_table(
            locks_pb2,
            "Locks",
            {
                R: ["Describe", "List", "WaitGraph", "ListDeadlocks"],
                W: ["Acquire", "AcquireMany", "Release"],
                A: ["Break"],
            },
        ),
        **_table(
            sessions_pb2,
            "Sessions",
            {
                R: ["List", "Sync", "Subscribe", "Read"],
                W: ["Open", "Delete", "Push", "Apply", "SetPresence"],
            },
        ),
        # Cancel: the proposer (who needed PROPOSE) or a vote admin agent, as the vote
        # store checks against the authenticated agent id.
        **_table(
            votes_pb2,
            "Votes",
            {R: ["Get", "List", "Watch", "CastMany"], W: ["Cast"], P: ["Propose", "Cancel"]},
        ),
        **_table(
            effects_pb2,
            "Effects",
            {
                R: ["Get", "List", "GetRun"],
                W: [
                    "Begin",
                    "BeginMany",
                    "Complete",
                    "CompleteMany",
                    "Abort",
                    "SetRunStatus",
                    "Compensate",
                ],
            },
        ),
        **_table(
            auth_pb2,
            "Auth",
            {
                Need.AUTHENTICATED: ["WhoAmI"],
                Need.CLUSTER_ADMIN: ["CreateToken", "RevokeToken", "ListPrincipals", "ListAudit"],
                # Granting ADMIN or cluster admin takes a cluster admin (auth.store).
                A: ["GrantRole", "RevokeRole", "GrantLabel", "RevokeLabel"],
            },
        ),
        # A namespace's own admin raising its quota would defeat it.
        **_table(quotas_pb2, "Quotas", {R: ["Get"], Need.CLUSTER_ADMIN: ["Set"]}),
        # The status names every namespace that called the replica: tenant information.
        **_table(replicas_pb2, "Replicas", {Need.CLUSTER_ADMIN: ["Status"]}),
    }
)


def granted(principal: records_pb2.PrincipalRecord, namespace: str) -> frozenset[Role]:
    """Every role the principal holds in namespace, with what each includes."""
    if principal.cluster_admin:
        return frozenset(ROLES)
    held = principal.roles[namespace].roles if namespace in principal.roles else ()
    return frozenset(r for role in held for r in _INCLUDES.get(role, ()))


def agents_of(principal: records_pb2.PrincipalRecord) -> list[str]:
    """The agent ids the principal may act as."""
    return list(principal.agents) or [principal.name]


def default_agent(principal: records_pb2.PrincipalRecord) -> str:
    """The agent a call acts as when it names none: the principal itself, or the one
    agent a service principal hosts (with several, the call must say which)."""
    return principal.agents[0] if len(principal.agents) == 1 else principal.name


def check_agent(principal: records_pb2.PrincipalRecord, agent: str) -> None:
    allowed = agents_of(principal)
    if agent not in allowed:
        raise PermissionDenied(
            f"principal {principal.name!r} may not act as agent {agent!r}; it may act as: "
            f"{', '.join(allowed)} (set accord-agent-id to one of them)",
            metadata={"principal": principal.name, "agent_id": agent, "agents": ",".join(allowed)},
        )


def authorize(
    principal: records_pb2.PrincipalRecord, method: str, need: Need | None, namespace: str
) -> None:
    """Refuse unless the principal may make this call in namespace."""
    if need is None:
        raise PermissionDenied(
            f"{method} is not in the coordinator's authorization table, so it is refused",
            metadata={"principal": principal.name, "method": method},
        )
    if need is Need.AUTHENTICATED:
        return
    if need is Need.CLUSTER_ADMIN:
        if not principal.cluster_admin:
            raise PermissionDenied(
                f"{method} needs a cluster admin; principal {principal.name!r} is not one",
                metadata={"principal": principal.name, "role": "CLUSTER_ADMIN", "namespace": ""},
            )
        return
    role: Role = need.value
    if role not in granted(principal, namespace):
        raise PermissionDenied(
            f"{method} needs role {role_name(role)} in namespace {namespace!r}; principal "
            f"{principal.name!r} has {_held(principal, namespace)} there (an admin grants "
            f"it with `accord auth role grant {principal.name} {role_name(role).lower()} "
            f"--namespace {namespace}`)",
            metadata={
                "principal": principal.name,
                "role": role_name(role),
                "namespace": namespace,
            },
        )


def authorize_held(call_roles: frozenset[int], principal: str, method: str, namespace: str) -> None:
    """Refuse unless roles held in namespace allow method (one operation of a batch, whose
    call was authorized already: only the role differs between operations)."""
    need = REQUIRED.get(method)
    if need is None or not isinstance(need.value, int):
        raise PermissionDenied(
            f"{method} cannot be part of a batch",
            metadata={"principal": principal, "method": method},
        )
    if need.value not in call_roles:
        role = auth_pb2.Role.ValueType(need.value)
        raise PermissionDenied(
            f"{method} needs role {role_name(role)} in namespace {namespace!r}; principal "
            f"{principal!r} does not hold it there (an admin grants it with `accord auth "
            f"role grant {principal} {role_name(role).lower()} --namespace {namespace}`)",
            metadata={"principal": principal, "role": role_name(role), "namespace": namespace},
        )


def _held(principal: records_pb2.PrincipalRecord, namespace: str) -> str:
    held = principal.roles[namespace].roles if namespace in principal.roles else ()
    return ", ".join(role_name(r) for r in held) if held else "no role"
