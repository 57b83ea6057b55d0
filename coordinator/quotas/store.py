"""Quota overrides in etcd: `{root}/quotas/{ns}`, one QuotaLimits per namespace.

Set reads the stored overrides, merges the request's fields over them (or starts from
none when clear is set), and writes the result in one transaction guarded by the mod
revision it read, with its audit entry (substrate.audit) on the retention lease. Every
replica follows the prefix (usage.py), so a change applies everywhere within the watch
lag.

Error handling: a negative, non-finite or absurd value is InvalidArgument naming the
field, and nothing is written; two admins setting at once are serialized by the guard
(the loser reads again and re-applies, a few times, then reports ConditionFailed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from accord.coordinator.substrate import audit
from accord.coordinator.substrate.errors import ConditionFailed, FieldViolation, require
from accord.coordinator.substrate.etcd import Etcd
from accord.coordinator.substrate.idempotency import Writes
from accord.coordinator.substrate.keyspace import Keyspace
from accord.coordinator.substrate.txn import Compare, Txn, absent, mod_is, put, read, txn
from accord.v1 import quotas_pb2
from accord.v1.auth_pb2 import AuditEntry

MAX_COUNT = 1 << 50
MAX_RATE = 1e9
MAX_BURST_SECONDS = 3600.0
ATTEMPTS = 5
_COUNTS = ("keys", "bytes", "leases", "sessions", "session_bytes", "votes_open", "streams")


def check(limits: quotas_pb2.QuotaLimits) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    for field, value in limits.ListFields():
        name = field.name
        if name in _COUNTS:
            if not 0 <= value <= MAX_COUNT:
                bad.append(FieldViolation(f"limits.{name}", f"must be between 0 and {MAX_COUNT}"))
        elif name == "burst_seconds":
            if not (math.isfinite(value) and 0 < value <= MAX_BURST_SECONDS):
                bad.append(
                    FieldViolation(
                        f"limits.{name}", f"must be > 0 and at most {MAX_BURST_SECONDS:g}"
                    )
                )
        elif not (math.isfinite(value) and 0 <= value <= MAX_RATE):
            bad.append(FieldViolation(f"limits.{name}", f"must be between 0 and {MAX_RATE:g}"))
    return bad


def _builder(
    key: bytes, stored: quotas_pb2.QuotaLimits, guard: Compare, logged: AuditEntry, keys: Keyspace
) -> Callable[[int], Txn]:
    """The transaction writing stored at key if guard holds, with its audit entry."""

    def build(lease: int) -> Txn:
        put_it = put(key, stored.SerializeToString())
        return txn(when=[guard], then=[put_it, audit.write(keys, logged, lease)])

    return build


class QuotaStore:
    def __init__(self, writes: Writes, etcd: Etcd, keys: Keyspace) -> None:
        self._writes = writes
        self._etcd = etcd
        self._keys = keys

    async def set(
        self, namespace: str, limits: quotas_pb2.QuotaLimits, *, clear: bool
    ) -> tuple[quotas_pb2.QuotaLimits, int]:
        """Store the namespace's overrides with limits' fields set; (overrides, revision)."""
        require(check(limits))
        key = self._keys.quota(namespace)
        for _ in range(ATTEMPTS):
            found = await self._etcd.range(read(key))
            stored = quotas_pb2.QuotaLimits()
            if found.kvs and not clear:
                stored.MergeFromString(found.kvs[0].value)
            stored.MergeFrom(limits)  # set fields replace; unset ones keep what was stored
            guard = mod_is(key, found.kvs[0].mod_revision) if found.kvs else absent(key)
            shown = " ".join(f"{f.name}={value:g}" for f, value in stored.ListFields())
            logged = audit.entry("SetQuota", namespace, shown)

            committed = await self._writes.commit(
                _builder(key, stored, guard, logged, self._keys), retained=True, batched=False
            )
            if committed.response.succeeded:
                return stored, committed.revision
        raise ConditionFailed(
            f"the quota of namespace {namespace!r} kept changing under this call; try again",
            metadata={"namespace": namespace},
        )
