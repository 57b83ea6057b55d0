"""Leases: an agent's liveness.

A lease is an etcd lease plus a record naming its agent and labels, attached to the
lease itself, so both end together. Everything an agent holds (lock queue entries,
semaphore permits, ephemeral keys) is attached to its lease and etcd deletes it when the
lease ends, whichever replica granted it. A lease belongs to the namespace it was
granted in: other namespaces cannot see, keep alive or revoke it.

A keep-alive stream refreshes the etcd lease for each request the agent sends (so an
agent that stalls stops refreshing it), and ends with LEASE_NOT_FOUND as soon as the
lease record disappears: expiry, revocation, or an admin breaking it.

Ownership (auth required): a lease belongs to the principal that granted it. Only that
principal, or an ADMIN of the namespace, may keep it alive, revoke it, or hang anything
on it (keys, lock entries, presence); anyone with READ may look at it. The record is
written once, with its lease, and never changed, and etcd never reuses a lease id, so
the owner `owned` reads is still the owner when the effect's own transaction runs, which
requires the lease to be alive.

Layout: keyspace.lease, a LeaseRecord attached to the lease itself.

Labels (auth required): a lease may carry only the labels an admin granted its
principal in the namespace (`accord auth label grant`), so a label electorate cannot be
packed with invented agents.

Listing: List pages through the lease records in id order (at most 1,000 a page), each
page one etcd range plus one keys-only range of the namespace's lock entries (at most
MAX_LOCK_ENTRIES_SCANNED; past that a page says locks_omitted), every page at the first
page's revision. It never asks etcd per lease, so it reports the granted TTL, not the
TTL left (TimeToLive does, with one LeaseTimeToLive call).

Error handling: a lease that does not exist in the namespace is LeaseNotFound; one that
another principal owns is PermissionDenied naming the owner (metadata "owner"); a label
not granted is PermissionDenied naming it (metadata "labels"); a List limit out of range
or a page token this service did not issue is InvalidArgument.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from accord.coordinator.observability import accord_metrics
from accord.coordinator.substrate import Substrate, audit, calls
from accord.coordinator.substrate.errors import (
    FieldViolation,
    InvalidArgument,
    LeaseNotFound,
    PermissionDenied,
)
from accord.coordinator.substrate.limits import require_counts
from accord.coordinator.substrate.txn import KeyValue, put, read, txn, watch
from accord.v1 import leases_pb2, records_pb2

MIN_TTL_SECONDS = 2
MAX_TTL_SECONDS = 3600
MAX_LABELS = 16
MAX_LABEL_BYTES = 256
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
# A List page reports locks from one keys-only read of this many lock entries at most.
MAX_LOCK_ENTRIES_SCANNED = 10_000
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    record: records_pb2.LeaseRecord


def _check_labels(call: calls.Call, labels: Mapping[str, str]) -> None:
    """With auth required a lease carries only labels an admin granted its principal:
    a label electorate must not count self-asserted members."""
    if call.labels is None:
        return
    claimed = sorted(f"{k}={v}" for k, v in labels.items() if call.labels.get(k) != v)
    if claimed:
        granted = ", ".join(f"{k}={v}" for k, v in sorted(call.labels.items())) or "none"
        raise PermissionDenied(
            f"principal {call.principal!r} holds no grant for lease label(s) "
            f"{', '.join(claimed)} in namespace {call.namespace!r} (granted: {granted}); "
            f"an admin grants one with `accord auth label grant {call.principal} KEY=VALUE`",
            metadata={"labels": ",".join(claimed), "namespace": call.namespace},
        )


def check_owner(lease: Lease) -> None:
    """Refuse unless the caller may use the lease: auth off, its own principal, or an
    ADMIN of the namespace."""
    call = calls.current.get()
    owner = lease.record.principal
    if not call.principal or call.namespace_admin or owner == call.principal:
        return
    raise PermissionDenied(
        f"lease {lease.id} belongs to principal {owner or '(granted without auth)'!r} "
        f"(agent {lease.record.agent_id!r}); only it or an ADMIN of namespace "
        f"{call.namespace!r} may use it",
        metadata={
            "lease_id": str(lease.id),
            "owner": owner,
            "role": "ADMIN",
            "namespace": call.namespace,
        },
    )


def lease_of(lease_id: int, raw: KeyValue | None) -> Lease:
    """The lease whose record (keyspace.lease, in the caller's namespace) was read as raw,
    or LEASE_NOT_FOUND when there was none (for a caller that read it with other keys)."""
    if raw is None:
        namespace = calls.current.get().namespace
        raise LeaseNotFound(
            f"lease {lease_id} does not exist in namespace {namespace!r}: it expired, was "
            "revoked, or was never granted here",
            metadata={"lease_id": str(lease_id)},
        )
    return Lease(lease_id, records_pb2.LeaseRecord.FromString(raw.value))


class LeaseStore:
    def __init__(self, substrate: Substrate) -> None:
        self._s = substrate

    async def grant(self, ttl: int, labels: Mapping[str, str]) -> leases_pb2.LeaseInfo:
        require_counts(("labels", len(labels), MAX_LABELS))
        violations: list[FieldViolation] = []
        if not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
            violations.append(
                FieldViolation(
                    "ttl_seconds", f"must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}"
                )
            )
        if len(labels) > MAX_LABELS:
            violations.append(FieldViolation("labels", f"at most {MAX_LABELS} labels"))
        for name, value in labels.items():
            if not name or len(name.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
                violations.append(
                    FieldViolation(
                        f"labels[{name!r}]", f"needs a name, and at most {MAX_LABEL_BYTES} bytes"
                    )
                )
        if violations:
            raise InvalidArgument(violations)
        call = calls.current.get()
        _check_labels(call, labels)
        granted = await self._s.etcd.lease_grant(ttl)
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(time.time_ns())
        record = records_pb2.LeaseRecord(
            agent_id=call.agent_id,
            granted_ttl_seconds=ttl,
            granted_at=now,
            labels=dict(labels),
            principal=call.principal,
        )
        key = self._s.keys.lease(call.namespace, granted.ID)
        try:  # the record lives exactly as long as the lease
            await self._s.committer.commit(
                txn(then=[put(key, record.SerializeToString(), lease=granted.ID)]), retry=True
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._s.etcd.lease_revoke(granted.ID)
            raise
        accord_metrics.lease_granted(call.namespace)
        return _info(granted.ID, record, granted.TTL)

    async def owned(self, lease_id: int) -> Lease:
        """The caller's lease, or LEASE_NOT_FOUND (gone, or another namespace's), or
        PERMISSION_DENIED (another principal's)."""
        lease = await self.find(lease_id)
        check_owner(lease)
        return lease

    async def check_owned(self, lease_id: int) -> None:
        """Refuse if the lease exists and is another principal's; a lease that is gone
        passes (whatever hung on it is gone too)."""
        if calls.current.get().principal:
            with contextlib.suppress(LeaseNotFound):
                await self.owned(lease_id)

    async def find(self, lease_id: int) -> Lease:
        """A lease of the caller's namespace, whoever owns it, or LEASE_NOT_FOUND."""
        namespace = calls.current.get().namespace
        if lease_id <= 0:
            raise InvalidArgument([FieldViolation("lease_id", "must be a lease id (> 0)")])
        response = await self._s.etcd.range(read(self._s.keys.lease(namespace, lease_id)))
        return lease_of(lease_id, response.kvs[0] if response.kvs else None)

    async def keepalive(self, lease_id: int) -> int:
        ttl = await self._s.etcd.lease_keepalive(lease_id)
        if ttl <= 0:
            accord_metrics.lease_expired(calls.current.get().namespace)
            raise LeaseNotFound(
                f"lease {lease_id} has expired", metadata={"lease_id": str(lease_id)}
            )
        return ttl

    async def keepalive_stream(
        self, requests: AsyncIterator[Any]
    ) -> AsyncIterator[tuple[int, int]]:
        """(lease id, TTL) for each keep-alive request; ends with LeaseNotFound as soon as
        a lease kept alive here disappears, even between requests."""
        events: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        namespace = calls.current.get().namespace
        watchers: dict[int, asyncio.Task[None]] = {}

        async def pump() -> None:
            async for request in requests:
                await events.put(("refresh", request.lease_id))
            await events.put(("end", 0))

        async def watch_gone(lease_id: int) -> None:
            key = self._s.keys.lease(namespace, lease_id)
            with contextlib.suppress(Exception):
                while True:  # wake-ups may be spurious: the record's presence decides
                    now = await self._s.etcd.range(read(key, count_only=True))
                    if not now.count:
                        await events.put(("gone", lease_id))
                        return
                    deleted = watch(
                        key, start_revision=now.header.revision + 1, deletions_only=True
                    )
                    await self._s.etcd.watch_hub.first_change([deleted], None)

        pumping = asyncio.create_task(pump())
        try:
            while True:
                kind, lease_id = await events.get()
                if kind == "end":
                    return
                if kind == "gone":
                    accord_metrics.lease_expired(namespace)
                    raise LeaseNotFound(
                        f"lease {lease_id} ended (expired or revoked); everything attached to "
                        "it was released",
                        metadata={"lease_id": str(lease_id)},
                    )
                if lease_id not in watchers:
                    await self.owned(lease_id)
                    watchers[lease_id] = asyncio.create_task(watch_gone(lease_id))
                yield lease_id, await self.keepalive(lease_id)
        finally:
            pumping.cancel()
            for task in watchers.values():
                task.cancel()

    async def revoke(self, lease_id: int) -> None:
        lease = await self.owned(lease_id)
        await self._s.etcd.lease_revoke(lease_id)
        if audit.on_behalf(lease.record.principal):  # an ADMIN ended another's lease
            what = f"agent {lease.record.agent_id}, principal {lease.record.principal}"
            logged = audit.entry("RevokeLease", str(lease_id), what)
            await audit.record(self._s.writes, self._s.keys, logged)

    async def info(self, lease_id: int) -> tuple[leases_pb2.LeaseInfo, list[bytes]]:
        """The lease and the etcd keys attached to it."""
        lease = await self.find(lease_id)
        ttl = await self._s.etcd.lease_time_to_live(lease_id)
        if ttl.TTL < 0:
            raise LeaseNotFound(
                f"lease {lease_id} has expired", metadata={"lease_id": str(lease_id)}
            )
        return _info(lease_id, lease.record, ttl.TTL), list(ttl.keys)

    async def records(self) -> list[leases_pb2.LeaseInfo]:
        """Every live lease of the namespace from its record (ttl_seconds 0, no locks):
        one etcd range, for label electorates."""
        prefix = self._s.keys.leases_prefix(calls.current.get().namespace)
        response = await self._s.etcd.range(read(prefix, prefix=True))
        return [
            _info(kv.lease, records_pb2.LeaseRecord.FromString(kv.value), 0) for kv in response.kvs
        ]

    async def list_page(self, limit: int, page_token: str) -> LeasePage:
        """A page of the namespace's leases in id order, from their records: one etcd range
        for the page and one keys-only range of the namespace's lock entries (at most
        MAX_LOCK_ENTRIES_SCANNED), both at the listing's first revision. No etcd call per
        lease: the remaining TTL is left 0 (TimeToLive reports it)."""
        violations = []
        if not 0 <= limit <= MAX_LIST_LIMIT:
            violations.append(FieldViolation("limit", f"must be between 0 and {MAX_LIST_LIMIT}"))
        cursor = LeaseCursor.decode(page_token) if page_token else None
        if page_token and cursor is None:
            violations.append(FieldViolation("page_token", "is not a token this service issued"))
        if violations:
            raise InvalidArgument(violations)
        ns = calls.current.get().namespace
        request = read(self._s.keys.leases_prefix(ns), prefix=True)
        if cursor is not None:
            request.key = self._s.keys.lease(ns, cursor.after_id) + b"\x00"
            request.revision = cursor.revision
        request.limit = limit or DEFAULT_LIST_LIMIT
        response = await self._s.etcd.range(request)
        revision = cursor.revision if cursor else response.header.revision
        leases = [
            _info(kv.lease, records_pb2.LeaseRecord.FromString(kv.value), 0) for kv in response.kvs
        ]
        locks_omitted = False
        if leases:
            entries = read(self._s.keys.locks_prefix(ns), prefix=True, keys_only=True)
            entries.revision = revision
            entries.limit = MAX_LOCK_ENTRIES_SCANNED
            scanned = await self._s.etcd.range(entries)
            locks_omitted = scanned.more
            if not locks_omitted:
                _add_locks(leases, self._s.keys.parse_lock_entry, ns, scanned.kvs)
        token = ""
        if response.more and leases:
            token = LeaseCursor(revision, leases[-1].id).encode()
        return LeasePage(revision, leases, token, locks_omitted)


@dataclass(frozen=True, slots=True)
class LeasePage:
    revision: int
    leases: list[leases_pb2.LeaseInfo]
    next_page_token: str
    locks_omitted: bool


@dataclass(frozen=True, slots=True)
class LeaseCursor:
    """Where a List page ended: the revision every page reads, the last lease id."""

    revision: int
    after_id: int

    def encode(self) -> str:
        raw = f"{self.revision}:{self.after_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(token: str) -> LeaseCursor | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            revision, after_id = raw.split(":")
            cursor = LeaseCursor(int(revision), int(after_id))
        except (ValueError, UnicodeDecodeError):
            return None
        if not (0 < cursor.revision <= INT64_MAX and 0 < cursor.after_id <= INT64_MAX):
            return None  # etcd's revisions and lease ids are int64
        return cursor


def _add_locks(
    leases: list[leases_pb2.LeaseInfo],
    parse: Callable[[str, bytes], tuple[str, int] | None],
    namespace: str,
    entries: Sequence[Any],
) -> None:
    """Each lease's locks, from the lock entries' keys (an entry ends with its lease id)."""
    by_id = {info.id: set[str]() for info in leases}
    for entry in entries:
        try:
            parsed = parse(namespace, entry.key)
        except ValueError:
            continue  # not a lock entry
        if parsed is not None and parsed[1] in by_id:
            by_id[parsed[1]].add(parsed[0])
    for info in leases:
        info.locks.extend(sorted(by_id[info.id]))


def _info(lease_id: int, record: records_pb2.LeaseRecord, ttl: int) -> leases_pb2.LeaseInfo:
    return leases_pb2.LeaseInfo(
        id=lease_id,
        agent_id=record.agent_id,
        granted_ttl_seconds=record.granted_ttl_seconds,
        ttl_seconds=ttl,
        granted_at=record.granted_at,
        labels=dict(record.labels),
        principal=record.principal,
    )
