"""The call being served: who is calling, in which namespace, and until when.

The server interceptor sets `current` once per RPC from the call metadata, the
credential and the gRPC deadline; primitives and the etcd layer read it, so the
caller's deadline bounds every etcd call and every wait made on its behalf. With auth
required, `principal` is the authenticated principal and `agent_id` one it may act as;
with auth off, `principal` is empty and `agent_id` is the caller's own claim.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from accord.coordinator.observability.trace_context import TraceContext
from accord.coordinator.substrate.errors import BadIdentity, DeadlineExceeded

NAMESPACE_METADATA = "accord-namespace"
AGENT_METADATA = "accord-agent-id"
TRACE_METADATA = "accord-trace-id"
AUTHORIZATION_METADATA = "authorization"
# Each may appear once on a call: with two, which one counts would be up to whoever reads.
SINGLE_METADATA = (NAMESPACE_METADATA, AGENT_METADATA, AUTHORIZATION_METADATA)
DEFAULT_NAMESPACE = "default"

_NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_AGENT_RE = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True, slots=True)
class Call:
    namespace: str
    agent_id: str
    trace_id: str
    # time.monotonic() at which the caller stops waiting; None when it set no deadline.
    deadline: float | None
    # The authenticated principal and the id of the token it presented ("": auth off).
    principal: str = ""
    token_id: str = ""
    # The principal holds ADMIN in this namespace (or is a cluster admin): it may act on
    # what others own (their leases, their votes).
    namespace_admin: bool = False
    # The caller's address as gRPC reports it (for the audit log).
    peer: str = ""
    # The lease labels an admin granted the principal here (None: auth off, any label).
    labels: Mapping[str, str] | None = None
    # The roles (auth_pb2.Role values) the principal holds here, with what each includes
    # (None: auth off): what each operation of a batch is authorized against.
    roles: frozenset[int] | None = None
    # The agent ids the principal may act as (None: auth off, any): what an operation of
    # a batch naming its own agent is checked against.
    agents: frozenset[str] | None = None
    # The caller's W3C trace context, checked and bounded (None: it sent none, or an
    # invalid one): recorded with what the call writes (observability/trace_context.py).
    trace_context: TraceContext | None = None

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def timeout(self, cap: float) -> float:
        """Seconds an etcd call may take: the caller's remaining time, at most cap."""
        left = self.remaining()
        if left is None:
            return cap
        if left <= 0:
            raise DeadlineExceeded("the call's deadline expired before the coordinator finished")
        return min(left, cap)


# A call with no deadline and the default identity: used for background work.
BACKGROUND = Call(namespace=DEFAULT_NAMESPACE, agent_id="", trace_id="", deadline=None)
current: ContextVar[Call] = ContextVar("accord_call", default=BACKGROUND)


def single_metadata(pairs: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The call's text metadata as a dict, refusing what a dict would hide: an identity
    entry given twice (the last would win), and a binary (-bin) form of one (its value
    would be ignored, and the call served as the default namespace or agent)."""
    metadata: dict[str, str] = {}
    for key, value in pairs:
        if key in SINGLE_METADATA and key in metadata:
            raise BadIdentity(
                f"metadata {key} is given more than once; send it once",
                metadata={"field": key},
            )
        if key.endswith("-bin") and key.removesuffix("-bin") in SINGLE_METADATA:
            raise BadIdentity(
                f"metadata {key} is not accepted: send {key.removesuffix('-bin')} as text",
                metadata={"field": key},
            )
        if isinstance(value, str):
            metadata[key] = value
    return metadata


def check_agent_id(agent: str, field: str, where: str) -> None:
    """Refuse an agent id that is not 1-128 printable ASCII characters without spaces
    (field: what ErrorInfo names; where: how the message names it)."""
    if not _AGENT_RE.fullmatch(agent):
        raise BadIdentity(
            f"{where} must be 1-128 printable ASCII characters without spaces",
            metadata={"field": field},
        )


def identity_from_metadata(metadata: dict[str, str]) -> tuple[str, str]:
    """Validate and return (namespace, agent_id) from call metadata."""
    namespace = metadata.get(NAMESPACE_METADATA, DEFAULT_NAMESPACE)
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise BadIdentity(
            f"metadata {NAMESPACE_METADATA}={namespace!r} is not a namespace: use 1-63 characters "
            "of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
            metadata={"field": NAMESPACE_METADATA},
        )
    agent = metadata.get(AGENT_METADATA, "")
    if agent:
        check_agent_id(agent, AGENT_METADATA, f"metadata {AGENT_METADATA}")
    return namespace, agent
