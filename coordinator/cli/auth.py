"""Admin commands for credentials: `accord auth bootstrap`, `accord auth whoami`,
`accord auth token create|revoke`, `accord auth role grant|revoke`,
`accord auth label grant|revoke`,
`accord auth principals ls`, and `accord audit ls`.

`bootstrap` is the one admin command that talks to etcd rather than to the service: it
writes the first cluster admin and its token, so a new cluster never has to be served
open to get one. The others call a running service with `--token` (or ACCORD_TOKEN).
A token's secret is printed once, by the command that made it; nothing can show it
again (etcd keeps only its SHA-256).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated

import typer

from accord.client import AsyncClient, NewToken, Principal, Role
from accord.coordinator.auth.store import AuthStore
from accord.coordinator.cli.common import (
    ADDR,
    EXIT_ERROR,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    NAMESPACE,
    AddrOpt,
    AgentOpt,
    NamespaceOpt,
    Output,
    OutputOpt,
    TokenOpt,
    as_dict,
    call,
    emit,
    fail,
    table_of,
    when,
)
from accord.coordinator.substrate import Substrate
from accord.coordinator.substrate.errors import AccordError, BackendUnavailable, DeadlineExceeded
from accord.coordinator.substrate.etcd import Etcd, TlsFiles
from accord.coordinator.substrate.limits import Limits
from accord.v1 import auth_pb2

auth_app = typer.Typer(help="Credentials: tokens, roles, principals.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log of administrative acts.", no_args_is_help=True)
token_app = typer.Typer(help="Create and revoke tokens.", no_args_is_help=True)
role_app = typer.Typer(help="Grant and revoke roles.", no_args_is_help=True)
principals_app = typer.Typer(help="List principals.", no_args_is_help=True)
label_app = typer.Typer(help="Grant and revoke lease labels.", no_args_is_help=True)
auth_app.add_typer(token_app, name="token")
auth_app.add_typer(role_app, name="role")
auth_app.add_typer(principals_app, name="principals")
auth_app.add_typer(label_app, name="label")
BOOTSTRAP_TIMEOUT_SECONDS = 15.0


class RoleName(StrEnum):
    read = "read"
    write = "write"
    propose = "propose"
    admin = "admin"
    cluster_admin = "cluster-admin"


def _label(key: str, value: str, weights: Mapping[str, float]) -> str:
    return f"{key}={value}" + (f" (weight {weights[key]:g})" if key in weights else "")


def _labels(principal: Principal) -> str:
    held = [
        f"{ns}: {', '.join(_label(k, v, ls.weights) for k, v in sorted(ls.labels.items()))}"
        for ns, ls in sorted(principal.labels.items())
    ]
    return "\n".join(held) or "-"


def _roles(principal: Principal) -> str:
    held = [
        f"{ns}: {', '.join(auth_pb2.Role.Name(r).removeprefix('ROLE_').lower() for r in rs.roles)}"
        for ns, rs in sorted(principal.roles.items())
    ]
    return "\n".join((["cluster-admin"] if principal.cluster_admin else []) + held) or "-"


def _print_secret(output: Output, made: NewToken) -> None:
    data = {"token": as_dict(made.info), "secret": made.secret}
    expires = when(made.info.expires_at) if made.info.HasField("expires_at") else "never"
    table = table_of(
        f"token {made.info.id} for {made.info.principal} (expires: {expires})",
        ["SECRET (shown once: store it now)"],
        [(made.secret,)],
    )
    emit(output, data, table)


# --- bootstrap: straight to etcd --------------------------------------------------------


@auth_app.command("bootstrap")
def bootstrap(
    principal: Annotated[str, typer.Option(help="name of the first cluster admin")],
    etcd: Annotated[str, typer.Option(envvar="ACCORD_ETCD", help="etcd host:port[,...]")],
    root: Annotated[
        str, typer.Option(envvar="ACCORD_ROOT", help="prefix of every etcd key Accord writes")
    ] = "accord",
    retention_ttl: Annotated[
        int,
        typer.Option(
            "--idempotency-ttl",
            envvar="ACCORD_IDEMPOTENCY_TTL",
            help="seconds the audit entry of this bootstrap is kept (as `accord serve`)",
        ),
    ] = 24 * 3600,
    force: Annotated[bool, typer.Option(help="even if a cluster admin exists already")] = False,
    etcd_ca: Annotated[str, typer.Option(envvar="ACCORD_ETCD_CA")] = "",
    etcd_cert: Annotated[str, typer.Option(envvar="ACCORD_ETCD_CERT")] = "",
    etcd_key: Annotated[str, typer.Option(envvar="ACCORD_ETCD_KEY")] = "",
    output: OutputOpt = Output.table,
) -> None:
    """Write a cluster-admin principal and its token into etcd, and print the token once.
    Refused when a cluster admin exists, unless --force."""
    endpoints = [e.strip() for e in etcd.split(",") if e.strip()]
    tls = TlsFiles(etcd_ca, etcd_cert or None, etcd_key or None) if etcd_ca else None

    async def main() -> NewToken:
        client = Etcd(endpoints, tls=tls)
        substrate = Substrate.over(client, root=root, limits=Limits(), retention_ttl=retention_ttl)
        try:
            store = AuthStore(substrate.writes, client, substrate.keys)
            made = await asyncio.wait_for(
                store.bootstrap(principal, force=force), BOOTSTRAP_TIMEOUT_SECONDS
            )
            return NewToken(made.info, made.secret)
        finally:
            await substrate.close()
            await client.close()

    try:
        made = asyncio.run(main())
    except (BackendUnavailable, DeadlineExceeded, TimeoutError) as exc:
        fail(f"cannot reach etcd at {etcd}: {exc}", EXIT_UNREACHABLE)
    except AccordError as exc:
        fail(exc.message, EXIT_ERROR)
    _print_secret(output, made)


# --- through the service -------------------------------------------------------------------


@auth_app.command("whoami")
def whoami(
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """The principal the token names, the agent it acts as, and its roles."""
    me = call(addr, namespace, agent, lambda c: c.auth.whoami(), token)
    rows = [
        ("auth", "required" if me.auth_required else "off (identity is a claim)"),
        ("principal", me.principal.name or "-"),
        ("agent", me.agent_id or "-"),
        ("may act as", ", ".join(me.principal.agents) or me.principal.name or "-"),
        ("namespace", me.namespace),
        ("token", me.token_id or "-"),
        ("roles", _roles(me.principal) if me.principal.name else "-"),
    ]
    emit(output, as_dict(me), table_of("who am I", ["", ""], rows))


@token_app.command("create")
def token_create(
    principal: Annotated[str, typer.Argument(help="who the token names (created if new)")],
    agent_ids: Annotated[
        list[str] | None,
        typer.Option(
            "--agents",
            help="an agent id a new principal may act as (repeatable; none: its own name)",
        ),
    ] = None,
    ttl: Annotated[int, typer.Option(help="seconds until it expires; 0: never")] = 0,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """Create a token and print its secret once. Needs a cluster admin."""
    made = call(
        addr,
        NAMESPACE,
        agent,
        lambda c: c.auth.create_token(principal, agents=agent_ids or [], ttl=ttl),
        token,
    )
    _print_secret(output, made)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id (`accord auth principals ls`)")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """Revoke a token: every replica refuses it within a second."""
    info = call(addr, NAMESPACE, agent, lambda c: c.auth.revoke_token(token_id), token)
    emit(
        output,
        as_dict(info),
        table_of("revoked", ["TOKEN", "PRINCIPAL"], [(info.id, info.principal)]),
    )


async def _set_role(client: AsyncClient, principal: str, role: RoleName, grant: bool) -> Principal:
    cluster = role is RoleName.cluster_admin
    named = None if cluster else Role[role.value.upper()]
    if grant:
        return await client.auth.grant(principal, named, cluster_admin=cluster)
    return await client.auth.revoke(principal, named, cluster_admin=cluster)


def _role_command(grant: bool) -> None:
    verb = "grant" if grant else "revoke"

    @role_app.command(verb)
    def command(
        principal: Annotated[str, typer.Argument(help="the principal")],
        role: Annotated[
            RoleName, typer.Argument(help="read, write, propose, admin, cluster-admin")
        ],
        output: OutputOpt = Output.table,
        addr: AddrOpt = ADDR,
        namespace: NamespaceOpt = NAMESPACE,
        agent: AgentOpt = "",
        token: TokenOpt = "",
    ) -> None:
        changed = call(
            addr, namespace, agent, lambda c: _set_role(c, principal, role, grant), token
        )
        emit(
            output,
            as_dict(changed),
            table_of(changed.name, ["ROLES"], [(_roles(changed),)]),
        )

    command.__doc__ = (
        f"{verb.capitalize()} a role in --namespace (or cluster-admin). ADMIN and "
        "cluster-admin take a cluster admin; other roles, an ADMIN of the namespace."
    )


_role_command(grant=True)
_role_command(grant=False)


@label_app.command("grant")
def label_grant(
    principal: Annotated[str, typer.Argument(help="the principal")],
    label: Annotated[str, typer.Argument(help="KEY=VALUE")],
    weight: Annotated[
        float | None,
        typer.Option(help="the principal's voter weight in label electorates (default 1)"),
    ] = None,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """Let a principal carry a lease label in --namespace (label electorates count only
    principals granted their labels). Needs an ADMIN of the namespace."""
    key, sep, value = label.partition("=")
    if not sep:
        fail("a label reads KEY=VALUE", EXIT_USAGE)
    changed = call(
        addr,
        namespace,
        agent,
        lambda c: c.auth.grant_label(principal, key, value, weight=weight),
        token,
    )
    emit(output, as_dict(changed), table_of(changed.name, ["LABELS"], [(_labels(changed),)]))


@label_app.command("revoke")
def label_revoke(
    principal: Annotated[str, typer.Argument(help="the principal")],
    key: Annotated[str, typer.Argument(help="the label's key")],
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    namespace: NamespaceOpt = NAMESPACE,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """Take back a lease label in --namespace."""
    changed = call(addr, namespace, agent, lambda c: c.auth.revoke_label(principal, key), token)
    emit(output, as_dict(changed), table_of(changed.name, ["LABELS"], [(_labels(changed),)]))


@principals_app.command("ls")
def principals_ls(
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """Every principal: the agents it may act as, its roles, its tokens (never secrets)."""
    found = call(addr, NAMESPACE, agent, lambda c: c.auth.principals(), token)
    rows = [
        (
            p.name,
            ", ".join(p.agents) or p.name,
            _roles(p),
            _labels(p),
            "\n".join(
                f"{t.id} (expires {when(t.expires_at) if t.HasField('expires_at') else 'never'})"
                for t in p.tokens
            )
            or "-",
        )
        for p in found
    ]
    emit(
        output,
        [as_dict(p) for p in found],
        table_of("principals", ["PRINCIPAL", "MAY ACT AS", "ROLES", "LABELS", "TOKENS"], rows),
    )


@audit_app.command("ls")
def audit_ls(
    limit: Annotated[int, typer.Option(help="at most this many entries, newest first")] = 50,
    output: OutputOpt = Output.table,
    addr: AddrOpt = ADDR,
    agent: AgentOpt = "",
    token: TokenOpt = "",
) -> None:
    """Administrative acts, newest first: when, who (principal/agent), from where, what."""
    found = call(addr, NAMESPACE, agent, lambda c: c.auth.audit(limit), token)
    rows = [
        (
            when(e.at),
            f"{e.principal}/{e.agent_id}" if e.agent_id else e.principal,
            e.peer or "-",
            e.namespace,
            e.action,
            e.target,
            e.detail,
        )
        for e in found
    ]
    emit(
        output,
        [as_dict(e) for e in found],
        table_of("audit log", ["AT", "WHO", "FROM", "NAMESPACE", "ACT", "ON", "DETAIL"], rows),
    )
