"""What `accord status` shows of one replica (accord.v1.Replicas.Status).

Two things are counted as calls are served, by the interceptor, at the cost of a few
integer operations each: `CallLoad.in_flight` (calls being served now, streams among
them) and calls per namespace over the last minute. The minute is six buckets of ten
seconds, turned by a timer rather than by reading a clock on every call. Each bucket
names at most `max_namespaces` namespaces; calls from further ones are counted as
untracked, so callers inventing namespaces cannot grow the replica's memory. Only calls
that passed authentication and authorization are counted by namespace: a refused call's
namespace is a claim.

Everything else is read when the status is asked for: health as the health loop last
set it, group-commit batch sizes (substrate/group_commit.py keeps the recent ones), open
connections from gRPC's channelz (connections.py), y-websocket sockets from their
counts, and each etcd endpoint's Maintenance Status, asked concurrently over
connections of their own, each within `ETCD_PROBE_SECONDS`.

Error handling: nothing here raises for an unreachable etcd: an endpoint that does not
answer is reported unhealthy with its error, and the status is still answered.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from accord.coordinator.observability import connections
from accord.coordinator.quotas.sockets import SocketCounts
from accord.coordinator.substrate.etcd import EndpointStatus, Etcd
from accord.coordinator.substrate.group_commit import GroupCommitter
from accord.v1 import common_pb2, replicas_pb2

BUCKET_SECONDS = 10.0
BUCKETS = 6  # the current one and the five before it: the last minute
MAX_NAMESPACES = 1_000  # named per bucket; calls from others are counted as untracked
DEFAULT_TOP, MAX_TOP = 10, 100
ETCD_PROBE_SECONDS = 1.0
_UNTRACKED = ""  # not a namespace (calls.py: a namespace is never empty)


def version() -> str:
    try:
        return metadata.version("accord")
    except metadata.PackageNotFoundError:
        return "unknown"


class CallLoad:
    """Calls in flight, and calls per namespace over the last minute, on this replica."""

    __slots__ = ("_current", "_past", "_timer", "in_flight", "max_namespaces", "streams")

    def __init__(self, max_namespaces: int = MAX_NAMESPACES) -> None:
        self.in_flight = 0
        self.streams = 0
        self.max_namespaces = max_namespaces
        self._current: dict[str, int] = {}
        self._past: deque[dict[str, int]] = deque(maxlen=BUCKETS - 1)
        self._timer: asyncio.TimerHandle | None = None

    def counted(self, namespace: str) -> None:
        """One admitted call in namespace (the hot path: a dict lookup and a store)."""
        counts = self._current
        seen = counts.get(namespace)
        if seen is None:
            if len(counts) >= self.max_namespaces:
                namespace = _UNTRACKED
                seen = counts.get(namespace, 0)
            else:
                seen = 0
        counts[namespace] = seen + 1

    def start(self) -> None:
        """Turn the buckets every BUCKET_SECONDS from now on."""
        self._timer = asyncio.get_running_loop().call_later(BUCKET_SECONDS, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def turn(self) -> None:
        """Start a new bucket; the oldest leaves the window."""
        self._past.append(self._current)
        self._current = {}

    def _tick(self) -> None:
        self.turn()
        self.start()

    def top(self, k: int) -> tuple[list[tuple[str, int]], int]:
        """The k namespaces with the most calls in the window, most first (ties by name),
        and the calls counted as untracked."""
        totals: dict[str, int] = {}
        for bucket in (*self._past, self._current):
            for namespace, n in bucket.items():
                totals[namespace] = totals.get(namespace, 0) + n
        untracked = totals.pop(_UNTRACKED, 0)
        best = heapq.nsmallest(k, totals.items(), key=lambda item: (-item[1], item[0]))
        return best, untracked


@dataclass(frozen=True, slots=True)
class StatusSources:
    """Where a replica's status is read from."""

    replica: str
    etcd: Etcd
    committer: GroupCommitter
    load: CallLoad
    sockets: SocketCounts
    serving: Callable[[], bool | None]  # the health loop's last verdict (None: not yet)
    started_at: float  # time.time() when the replica started
    started_monotonic: float


async def snapshot(sources: StatusSources, top: int) -> replicas_pb2.ReplicasStatusResponse:
    """The replica's status, with the top namespaces (0: DEFAULT_TOP; at most MAX_TOP)."""
    endpoints = await sources.etcd.endpoint_statuses(ETCD_PROBE_SECONDS)
    response = replicas_pb2.ReplicasStatusResponse(
        header=common_pb2.ResponseHeader(replica=sources.replica),
        replica=sources.replica,
        version=version(),
        uptime_seconds=round(time.monotonic() - sources.started_monotonic, 3),
        health=_health(sources.serving()),
        etcd=_etcd(endpoints),
        connections=_connections(sources.sockets),
        calls_in_flight=sources.load.in_flight,
        streams_open=sources.load.streams,
        group_commit=_group_commit(sources.committer),
        window_seconds=int(BUCKET_SECONDS * BUCKETS),
    )
    response.started_at.FromNanoseconds(int(sources.started_at * 1e9))
    best, untracked = sources.load.top(min(top if top > 0 else DEFAULT_TOP, MAX_TOP))
    response.top_namespaces.extend(
        replicas_pb2.NamespaceLoad(namespace=name, calls=n) for name, n in best
    )
    response.untracked_calls = untracked
    return response


def _health(serving: bool | None) -> replicas_pb2.Health.ValueType:
    if serving is None:
        return replicas_pb2.HEALTH_UNKNOWN
    return replicas_pb2.HEALTH_SERVING if serving else replicas_pb2.HEALTH_NOT_SERVING


def _etcd(endpoints: list[EndpointStatus]) -> replicas_pb2.EtcdStatus:
    status = replicas_pb2.EtcdStatus()
    for found in endpoints:
        entry = status.endpoints.add(
            endpoint=found.endpoint, error=found.error, latency_seconds=round(found.seconds, 6)
        )
        answer = found.answer
        if answer is None:
            continue
        entry.healthy = True
        entry.member_id = answer.header.member_id
        entry.leader_id = answer.leader
        entry.raft_term = answer.raftTerm
        entry.version = answer.version
        entry.db_size_bytes = answer.dbSize
        if answer.raftTerm >= status.raft_term and answer.leader:
            status.raft_term, status.leader_id = answer.raftTerm, answer.leader
    status.leader_endpoint = next(
        (e.endpoint for e in status.endpoints if e.healthy and e.member_id == status.leader_id),
        "",
    )
    return status


def _connections(sockets: SocketCounts) -> replicas_pb2.Connections:
    peers = connections.grpc_peers()
    return replicas_pb2.Connections(
        grpc=len(peers), grpc_peers=len({host for host, _ in peers}), websocket=sockets.total
    )


def _group_commit(committer: GroupCommitter) -> replicas_pb2.GroupCommitStatus:
    recent = list(committer.recent_sizes)
    return replicas_pb2.GroupCommitStatus(
        batches=committer.batches,
        writes=committer.writes,
        recent_batches=len(recent),
        recent_mean=round(sum(recent) / len(recent), 3) if recent else 0.0,
        recent_max=max(recent, default=0),
    )
