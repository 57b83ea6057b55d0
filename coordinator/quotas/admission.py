"""Admission: whether a call may run, by its namespace's quotas, decided in microseconds.

The interceptor asks once per call, after identity and before the method runs:
- every call takes a token from its namespace's bucket and from its principal's (auth
  required) or agent id's (auth off) bucket (buckets.py); a write that can add takes one
  more per started TOKEN_BYTES of its size;
- a call that can only add to what the namespace holds is checked against the counts of
  usage.py (dict lookups, no etcd call): KV.Put and a Txn with a put (keys, and bytes by
  the request's size), Leases.Grant (leases), Sessions.Open (sessions), Sessions.Push,
  Apply and SetPresence (session bytes by the request's size), Votes.Propose (open votes),
  Effects.Begin and Complete (keys, and bytes by the request's size).
  Deletes, reads and releases are never refused for counts, so a namespace over quota
  can always clean up;
- a store asks `admit_new` where only it knows a call adds: an Effects.Begin that would
  create an effect record (effects); a Begin of a recorded key, Complete and Abort are
  never refused for that count;
- a server stream counts against the namespace's open streams on this replica while it
  is open.
Calls of the Quotas, Auth and Replicas services are exempt: an admin can always raise a
limit, mint a token, take a role back or look at a replica's status in a namespace that
is being flooded.

Rates and streams are per replica: across N replicas a namespace may reach N times its
limit (a client talks to one replica at a time, so an agent normally sees its limit).
Counts are cluster-wide, from etcd; their overshoot bound is in usage.py.

Error handling: a refusal is QuotaExceeded (RESOURCE_EXHAUSTED, reason QUOTA_EXCEEDED)
with a QuotaFailure (subject "namespace:NS" or "agent:NS/ID", the limit's name) and a
RetryInfo: for a rate, when the bucket has a token again (a RateExceeded, which the
interceptor answers only then, within bounds: tarpit.py); for a count, COUNT_RETRY_SECONDS
(it frees only when something is deleted). Nothing has run, so nothing was written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.protobuf.message import Message

from accord.coordinator.auth.roles import method_name
from accord.coordinator.quotas.buckets import Buckets
from accord.coordinator.quotas.limits import Limit, QuotaLimits
from accord.coordinator.quotas.tarpit import MAX_HOLD_SECONDS, Tarpit
from accord.coordinator.quotas.usage import Usage, UsageBook
from accord.coordinator.substrate import calls
from accord.coordinator.substrate.errors import QuotaExceeded, RateExceeded
from accord.v1 import (
    auth_pb2,
    effects_pb2,
    kv_pb2,
    leases_pb2,
    quotas_pb2,
    replicas_pb2,
    sessions_pb2,
    votes_pb2,
)

COUNT_RETRY_SECONDS = 30.0
# A write takes one more rate token per started TOKEN_BYTES of its size (a 512 KiB Txn
# takes 9): the rate paces the bytes a namespace pushes through etcd, not only its calls.
TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Grows:
    """What a call can add to: the limits checked, and whether this request adds at all
    (e.g. a Txn of deletes only does not)."""

    limits: tuple[Limit, ...]
    adds: Callable[[Any], bool] = lambda request: True


def _txn_puts(request: kv_pb2.TxnRequest) -> bool:
    return any(op.HasField("put") for op in request.ops)


_KEYS, _BYTES = Limit.KEYS, Limit.BYTES
GROWS: MappingProxyType[str, Grows] = MappingProxyType(
    {
        method_name(kv_pb2, "KV", "Put"): Grows((_KEYS, _BYTES)),
        method_name(kv_pb2, "KV", "Txn"): Grows((_KEYS, _BYTES), _txn_puts),
        method_name(leases_pb2, "Leases", "Grant"): Grows((Limit.LEASES,)),
        method_name(sessions_pb2, "Sessions", "Open"): Grows((Limit.SESSIONS,)),
        method_name(sessions_pb2, "Sessions", "Push"): Grows((Limit.SESSION_BYTES,)),
        method_name(sessions_pb2, "Sessions", "Apply"): Grows((Limit.SESSION_BYTES,)),
        method_name(sessions_pb2, "Sessions", "SetPresence"): Grows((Limit.SESSION_BYTES,)),
        method_name(votes_pb2, "Votes", "Propose"): Grows((Limit.VOTES_OPEN,)),
        # The effect ledger's records live under the namespace too: a namespace at its
        # key or byte quota begins no effect and records no outcome.
        method_name(effects_pb2, "Effects", "Begin"): Grows((_KEYS, _BYTES)),
        method_name(effects_pb2, "Effects", "Complete"): Grows((_KEYS, _BYTES)),
    }
)
_EXEMPT_PREFIXES = tuple(
    f"/{module.DESCRIPTOR.services_by_name[name].full_name}/"
    for module, name in ((quotas_pb2, "Quotas"), (auth_pb2, "Auth"), (replicas_pb2, "Replicas"))
)
# The size-bounded limits: the request's own bytes are added before comparing.
_BY_SIZE = frozenset({Limit.BYTES, Limit.SESSION_BYTES})


def _held(usage: Usage, limit: Limit) -> int:
    held: int = getattr(usage, limit.value)
    return held


class Rule:
    """Admission for one method, resolved once per method."""

    __slots__ = ("exempt", "grows", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.exempt = method.startswith(_EXEMPT_PREFIXES)
        self.grows = GROWS.get(method)


class Admission:
    def __init__(
        self, book: UsageBook, *, by_principal: bool, hold: float = MAX_HOLD_SECONDS
    ) -> None:
        """hold: the longest a rate refusal is held before it is answered (tarpit.py)."""
        self.book = book
        self._by_principal = by_principal
        self._buckets = Buckets()
        self._streams: dict[str, int] = {}
        self.tarpit = Tarpit(max_hold=hold)  # where the interceptor holds rate refusals
        self.refused = 0  # refusals since start (benchmarks read it)

    def rule(self, method: str) -> Rule:
        return Rule(method)

    def streams(self, namespace: str) -> int:
        return self._streams.get(namespace, 0)

    def admit(self, rule: Rule, call: calls.Call, request: Any) -> None:
        """Refuse (QuotaExceeded) unless the call may run now."""
        if rule.exempt:
            return
        namespace = call.namespace
        limits = self.book.limits(namespace)
        grows = rule.grows
        # Not an undecodable request (refused later) nor one that adds nothing.
        adds = grows is not None and isinstance(request, Message) and grows.adds(request)
        size = request.ByteSize() if adds else 0
        self._take(namespace, call, limits, size)
        if grows is not None and adds and self.book.synced:
            usage = self.book.usage(namespace)
            for limit in grows.limits:
                allowed = limits.of(limit)
                held = _held(usage, limit)
                wanted = held + (size if limit in _BY_SIZE else 1)
                if wanted > allowed:
                    self._refuse_count(namespace, limit, held, allowed)

    def admit_new(self, namespace: str, limit: Limit) -> None:
        """Refuse (QuotaExceeded) a call about to create one more of limit's records in
        the namespace when it holds its quota (not while the counts are unsynced)."""
        if not self.book.synced:
            return
        allowed = self.book.limits(namespace).of(limit)
        held = _held(self.book.usage(namespace), limit)
        if held + 1 > allowed:
            self._refuse_count(namespace, limit, held, allowed)

    def open_stream(self, rule: Rule, call: calls.Call) -> None:
        """Admit a server stream and count it open; the caller must close_stream."""
        if rule.exempt:
            return
        namespace = call.namespace
        limits = self.book.limits(namespace)
        self._take(namespace, call, limits)
        open_now = self._streams.get(namespace, 0)
        if open_now >= limits.streams:
            self._refuse_count(namespace, Limit.STREAMS, open_now, limits.streams)
        self._streams[namespace] = open_now + 1

    def close_stream(self, rule: Rule, call: calls.Call) -> None:
        if rule.exempt:
            return
        left = self._streams.get(call.namespace, 0) - 1
        if left > 0:
            self._streams[call.namespace] = left
        else:
            self._streams.pop(call.namespace, None)

    def _take(self, namespace: str, call: calls.Call, limits: QuotaLimits, size: int = 0) -> None:
        """Take the call's tokens (one, and one more per started TOKEN_BYTES of size)."""
        cost = 1.0 + size // TOKEN_BYTES
        now = time.monotonic()
        burst = limits.burst_seconds
        wait = self._buckets.take(namespace, limits.requests_per_second, burst, now, cost)
        if wait:
            self.refused += 1
            raise RateExceeded(
                f"namespace {namespace!r} is over its rate of {limits.requests_per_second:g} "
                "requests/s on this replica",
                subject=f"namespace:{namespace}",
                limit=Limit.REQUESTS_PER_SECOND.value,
                retry_after=wait,
                request_bytes=size,
                namespace=namespace,
            )
        who = (call.principal if self._by_principal else "") or call.agent_id
        wait = self._buckets.take(
            f"{namespace}\x00{who}", limits.agent_requests_per_second, burst, now, cost
        )
        if wait:
            self.refused += 1
            kind = "principal" if self._by_principal and call.principal else "agent"
            raise RateExceeded(
                f"{kind} {who!r} is over its rate of {limits.agent_requests_per_second:g} "
                f"requests/s in namespace {namespace!r} on this replica",
                subject=f"{kind}:{namespace}/{who}",
                limit=Limit.AGENT_REQUESTS_PER_SECOND.value,
                retry_after=wait,
                request_bytes=size,
                namespace=namespace,
            )

    def _refuse_count(self, namespace: str, limit: Limit, held: float, allowed: float) -> None:
        self.refused += 1
        raise QuotaExceeded(
            f"namespace {namespace!r} holds {held:g} of its {allowed:g} {limit.value} quota "
            f"and this call would exceed it; free some, or ask a cluster admin "
            f"(`accord quota set --namespace {namespace} {limit.value}=N`)",
            subject=f"namespace:{namespace}",
            limit=limit.value,
            retry_after=COUNT_RETRY_SECONDS,
            namespace=namespace,
            held=f"{held:g}",
            allowed=f"{allowed:g}",
        )
