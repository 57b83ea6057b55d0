"""Who an MCP session is to Accord: the token it presents, and the Accord client that
carries it.

Over stdio the token is the server's own (ACCORD_TOKEN, read by the CLI): one agent host
spawns one process for itself. Over streamable HTTP every request carries
`Authorization: Bearer <accord token>`, and may name the agent it acts as with
`Accord-Agent-Id` (default: the server's --agent, else the token's principal; with auth
required the service checks the principal may act as it). `PassThroughVerifier` lets the
SDK's bearer middleware refuse a request without a token (401) and bind each MCP session
to the token that opened it (a request of that session with another token is answered
404), while the token's validity is Accord's to judge on the session's first tool call.
The façade holds no credentials of its own.

One AsyncClient per distinct token and agent (all replicas' addresses: failover is the
client's), shared by the sessions presenting them and closed when the last of them ends.

Error handling: a request with no usable token gets UnauthenticatedError from `of`
(HTTP requests without one never get this far); errors closing a client are logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from mcp.server.auth.provider import AccessToken

from accord.client import AsyncClient, RetryPolicy, UnauthenticatedError

log = logging.getLogger("accord.mcp")

# Calls fail over between replicas within the tool call (RetryPolicy's default backoff).
CALL_TIMEOUT_SECONDS = 10.0


AGENT_HEADER = "accord-agent-id"


@dataclass(frozen=True)
class Identity:
    token: str
    agent_id: str


@dataclass
class _Held:
    client: AsyncClient
    holders: int


def token_id(token: str) -> str:
    """A stable name for a token that does not reveal it (logs, session ownership)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class PassThroughVerifier:
    """An SDK TokenVerifier that accepts any well-formed bearer token: Accord decides
    whether it is valid when the session first calls it."""

    async def verify_token(self, token: str) -> AccessToken | None:
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            return None
        return AccessToken(token=token, client_id=token_id(token), scopes=[])


class Identities:
    """Tokens to Accord clients, shared and reference-counted."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        namespace: str,
        agent_id: str = "",
        stdio_token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """stdio_token: the token of every session (stdio); None: each request's own."""
        self.addresses = list(addresses)
        self.namespace = namespace
        self.agent_id = agent_id
        self.stdio_token = stdio_token
        self._credentials = credentials
        self._held: dict[Identity, _Held] = {}
        self._lock = asyncio.Lock()

    def of(self, headers: Mapping[str, str] | None) -> Identity:
        """Who a request is: the server's token (stdio) or its own (HTTP)."""
        if self.stdio_token is not None:
            return Identity(self.stdio_token, self.agent_id)
        found = {name.lower(): value for name, value in (headers or {}).items()}
        scheme, _, token = found.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError(
                "no bearer token: send Authorization: Bearer <accord token>",
                reason="UNAUTHENTICATED",
            )
        return Identity(token.strip(), found.get(AGENT_HEADER, "").strip() or self.agent_id)

    async def hold(self, who: Identity) -> AsyncClient:
        async with self._lock:
            held = self._held.get(who)
            if held is None:
                held = self._held[who] = _Held(self._client(who), 0)
            held.holders += 1
            return held.client

    async def let_go(self, who: Identity) -> None:
        async with self._lock:
            held = self._held.get(who)
            if held is None:
                return
            held.holders -= 1
            if held.holders > 0:
                return
            del self._held[who]
        await _close(held.client)

    async def close(self) -> None:
        async with self._lock:
            held, self._held = list(self._held.values()), {}
        for each in held:
            await _close(each.client)

    def held_clients(self) -> int:
        return len(self._held)

    def _client(self, who: Identity) -> AsyncClient:
        return AsyncClient(
            self.addresses,
            agent_id=who.agent_id,
            namespace=self.namespace,
            timeout=CALL_TIMEOUT_SECONDS,
            retry=RetryPolicy(),
            token=who.token,
            credentials=self._credentials,
        )


async def _close(client: AsyncClient) -> None:
    try:
        await client.close()
    except Exception:
        log.exception("closing an Accord client")
