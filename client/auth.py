"""Credentials as an admin (or any caller) uses them: who am I, tokens, roles.

``await accord.auth.whoami()`` says which principal the client's token names and what it
may do. A cluster admin mints tokens with
``await accord.auth.create_token("planner-1", ttl=86400)`` (the secret is in the answer
once; etcd keeps only its hash) and grants roles in the client's namespace with
``await accord.auth.grant("planner-1", Role.WRITE)``.

CreateToken is not retried after an ambiguous failure (a retry would mint a second
token); everything else is safe to repeat.

Error handling: a call without a valid token raises UnauthenticatedError; one the token
does not allow raises PermissionDeniedError, whose `role` and `namespace` say what was
missing (minting tokens and granting ADMIN take a cluster admin). Against a replica with
auth off, everything but whoami raises ConditionFailedError (metadata auth=off).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from accord.client import calls
from accord.client.transport import Transport
from accord.v1 import auth_pb2

# The contract's own messages (typed through their .pyi stubs).
Principal = auth_pb2.Principal
TokenInfo = auth_pb2.TokenInfo
WhoAmI = auth_pb2.WhoAmIResponse
AuditEntry = auth_pb2.AuditEntry


class AuditPage(builtins.list[AuditEntry]):
    """Audit entries, newest first, that also say where the next, older page starts:
    pass next_page_token as page_token ("": this is the last page)."""

    def __init__(self, entries: Iterable[AuditEntry], next_page_token: str) -> None:
        super().__init__(entries)
        self.next_page_token = next_page_token


class Role(IntEnum):
    """A role in one namespace. ADMIN includes the others; WRITE and PROPOSE include READ."""

    READ = auth_pb2.ROLE_READ
    WRITE = auth_pb2.ROLE_WRITE
    PROPOSE = auth_pb2.ROLE_PROPOSE
    ADMIN = auth_pb2.ROLE_ADMIN


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created: `secret` is the bearer token, shown this once."""

    info: TokenInfo
    secret: str


class AsyncAuth:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def whoami(self, *, timeout: float | None = None) -> WhoAmI:
        """The principal this client's token names, its roles, and the agent it acts as."""
        return await self._t.unary(calls.AUTH_WHO_AM_I, auth_pb2.WhoAmIRequest(), timeout=timeout)

    async def create_token(
        self,
        principal: str,
        *,
        agents: list[str] | None = None,
        ttl: int = 0,
        timeout: float | None = None,
    ) -> NewToken:
        """A new token for principal (created, with agents, if new). ttl: seconds until
        it expires (0: never). Needs a cluster admin."""
        request = auth_pb2.CreateTokenRequest(
            principal=principal, agents=agents or [], ttl_seconds=ttl
        )
        response = await self._t.unary(calls.AUTH_CREATE_TOKEN, request, timeout=timeout)
        return NewToken(response.token, response.secret)

    async def revoke_token(self, token_id: str, *, timeout: float | None = None) -> TokenInfo:
        """Revoke a token by id: every replica refuses it within a second."""
        request = auth_pb2.RevokeTokenRequest(token_id=token_id)
        response = await self._t.unary(calls.AUTH_REVOKE_TOKEN, request, timeout=timeout)
        return response.token

    async def principals(self, *, timeout: float | None = None) -> list[Principal]:
        """Every principal with its roles and tokens (never their secrets)."""
        request = auth_pb2.ListPrincipalsRequest()
        response = await self._t.unary(calls.AUTH_LIST_PRINCIPALS, request, timeout=timeout)
        return list(response.principals)

    async def grant(
        self,
        principal: str,
        role: Role | None = None,
        *,
        cluster_admin: bool = False,
        timeout: float | None = None,
    ) -> Principal:
        """Grant role in this client's namespace (or, with cluster_admin, cluster admin)."""
        request = auth_pb2.GrantRoleRequest(
            principal=principal,
            role=auth_pb2.Role.ValueType(role or 0),
            cluster_admin=cluster_admin,
        )
        response = await self._t.unary(calls.AUTH_GRANT_ROLE, request, timeout=timeout)
        return response.principal

    async def revoke(
        self,
        principal: str,
        role: Role | None = None,
        *,
        cluster_admin: bool = False,
        timeout: float | None = None,
    ) -> Principal:
        """Take back role in this client's namespace (or, with cluster_admin, cluster admin)."""
        request = auth_pb2.RevokeRoleRequest(
            principal=principal,
            role=auth_pb2.Role.ValueType(role or 0),
            cluster_admin=cluster_admin,
        )
        response = await self._t.unary(calls.AUTH_REVOKE_ROLE, request, timeout=timeout)
        return response.principal

    async def audit(
        self, limit: int = 100, *, page_token: str = "", timeout: float | None = None
    ) -> AuditPage:
        """Administrative acts, newest first: who, what, when, from where. Needs a cluster
        admin."""
        request = auth_pb2.ListAuditRequest(limit=limit, page_token=page_token)
        response = await self._t.unary(calls.AUTH_LIST_AUDIT, request, timeout=timeout)
        return AuditPage(response.entries, response.next_page_token)

    async def grant_label(
        self,
        principal: str,
        key: str,
        value: str,
        *,
        weight: float | None = None,
        timeout: float | None = None,
    ) -> Principal:
        """Let principal carry the lease label key=value in this client's namespace (with
        auth required, a lease carries only labels granted this way). weight: what each of
        its agents weighs in a label electorate selecting the label (None: 1)."""
        request = auth_pb2.GrantLabelRequest(principal=principal, key=key, value=value)
        if weight is not None:
            request.weight = weight
        response = await self._t.unary(calls.AUTH_GRANT_LABEL, request, timeout=timeout)
        return response.principal

    async def revoke_label(
        self, principal: str, key: str, *, timeout: float | None = None
    ) -> Principal:
        """Take back a lease label in this client's namespace."""
        request = auth_pb2.RevokeLabelRequest(principal=principal, key=key)
        response = await self._t.unary(calls.AUTH_REVOKE_LABEL, request, timeout=timeout)
        return response.principal
