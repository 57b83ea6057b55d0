"""Every Prometheus metric a replica exposes, in one registry, and the namespace label.

The gRPC server metrics carry go-grpc-prometheus's names and labels (grpc_type,
grpc_service, grpc_method, and grpc_code on handled, spelled as Go spells codes: "OK",
"NotFound", ...), so dashboards and alerts written for Go services work unchanged.
Accord's own metrics are prefixed `accord_`. A namespace is a label value only through
namespace_label(), which admits the first `max_namespaces` distinct namespaces this
process labels and answers `_other` for the rest: a caller inventing namespaces cannot
grow the series without bound. Lock, key, session and vote names are never label values.

Metrics are on when the replica serves /metrics (--metrics-listen; metrics_http.py).
Off, nothing updates them: code on a hot path asks enabled() once (or binds its label
children only when on), so a replica nobody scrapes pays nothing per call.

Error handling: nothing here raises on a hot path; a metric never changes what a call
does. configure() refuses a max_namespaces below 1 (ValueError), at startup.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterator

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# No `_created` series beside each counter: go-grpc-prometheus has none, and they double
# the series a scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...; python_info.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

OTHER_NAMESPACES = "_other"  # no namespace is spelled so: they start with a letter or digit
DEFAULT_MAX_NAMESPACES = 100

# Calls take ~0.3-2 ms here; streams and lock waits may last minutes.
CALL_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
)  # fmt: skip
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ETCD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_GRPC = ("grpc_type", "grpc_service", "grpc_method")
UNARY = "unary"
SERVER_STREAM = "server_stream"
BIDI_STREAM = "bidi_stream"


class MethodCounts:
    """One gRPC method's server metrics, as plain numbers: only the event loop's thread
    writes them (an increment is a few tens of nanoseconds, where a prometheus-client
    child takes a lock per update), and a scrape reads them as they are."""

    __slots__ = ("buckets", "handled", "labels", "received", "seconds", "sent", "started")

    def __init__(self, grpc_type: str, service: str, method: str) -> None:
        self.labels = (grpc_type, service, method)
        self.started = 0
        self.received = 0  # a unary method's is `started`: see GrpcServerMetrics.collect
        self.sent = 0  # a unary method's is handled[OK]
        self.handled: dict[grpc.StatusCode, int] = {}
        self.buckets = [0] * (len(CALL_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(CALL_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def ended(self) -> int:
        return sum(self.handled.values())


class GrpcServerMetrics(Collector):
    """grpc_server_* and accord_inflight_calls, from every method's MethodCounts."""

    def __init__(self) -> None:
        self.methods: list[MethodCounts] = []

    def method(self, grpc_type: str, service: str, method: str) -> MethodCounts:
        """The counts of one method (once per method: the interceptor keeps them)."""
        counts = MethodCounts(grpc_type, service, method)
        self.methods.append(counts)
        return counts

    def inflight(self) -> int:
        """accord.* calls in progress (open streams included): started and not ended."""
        return sum(-m.ended() + m.started for m in list(self.methods))  # ended read first

    def collect(self) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "grpc_server_started_total", "RPCs started on the server.", labels=_GRPC
        )
        handled = CounterMetricFamily(
            "grpc_server_handled_total",
            "RPCs completed on the server, by the status code they ended with.",
            labels=(*_GRPC, "grpc_code"),
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its status (a stream's whole life).",
            labels=_GRPC,
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received_total",
            "Request messages received (each message of a client stream).",
            labels=_GRPC,
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent_total",
            "Response messages sent (each message of a server stream).",
            labels=_GRPC,
        )
        inflight = 0
        for m in list(self.methods):
            codes = dict(m.handled)  # before started: a call ends only after it starts
            begun, unary = m.started, m.labels[0] == UNARY
            started.add_metric(m.labels, begun)
            received.add_metric(m.labels, begun if unary else m.received)
            sent.add_metric(m.labels, codes.get(grpc.StatusCode.OK, 0) if unary else m.sent)
            for code, count in codes.items():
                handled.add_metric((*m.labels, CODE_LABELS.get(code, "Unknown")), count)
            cumulative, buckets = 0, []
            for bound, count in zip((*CALL_BUCKETS, math.inf), list(m.buckets), strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            seconds.add_metric(m.labels, buckets, m.seconds)
            inflight += begun - sum(codes.values())
        yield from (started, handled, seconds, received, sent)
        yield GaugeMetricFamily(
            "accord_inflight_calls",
            "accord.* calls in progress on this replica (open streams included).",
            value=inflight,
        )


# --- gRPC server (kept by the interceptor: metrics_calls.py) --------------------------------
GRPC_SERVER = GrpcServerMetrics()
REGISTRY.register(GRPC_SERVER)
AUTH_REFUSALS = Counter(
    "accord_auth_refusals_total",
    "Calls or batch operations refused for want of a credential (Unauthenticated) or "
    "of a right (PermissionDenied), by code; never labelled by namespace.",
    ("code",),
    registry=REGISTRY,
)
QUOTA_REFUSALS = Counter(
    "accord_quota_refusals_total",
    "Calls or batch operations refused by a namespace quota or request rate, by limit.",
    ("namespace", "limit"),
    registry=REGISTRY,
)

# --- locks ----------------------------------------------------------------------------------
LOCK_WAIT_SECONDS = Histogram(
    "accord_lock_wait_seconds",
    "Time an acquire waited in the queue before its grant.",
    ("namespace", "kind"),  # kind: exclusive | shared | semaphore
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
LOCK_GRANTS = Counter(
    "accord_lock_grants_total",
    "Lock grants (at once or after a wait).",
    ("namespace", "kind"),
    registry=REGISTRY,
)
LOCK_HANDOFFS = Counter(
    "accord_lock_handoffs_total",
    "Grants to the next waiter when a holder released or expired.",
    ("namespace",),
    registry=REGISTRY,
)
LOCK_TIMEOUTS = Counter(
    "accord_lock_timeouts_total",
    "Acquires that gave up waiting at their deadline.",
    ("namespace",),
    registry=REGISTRY,
)
DEADLOCKS = Counter(
    "accord_deadlocks_total",
    "Wait-for cycles found and broken, by the policy that broke them.",
    ("namespace", "policy"),
    registry=REGISTRY,
)
FENCE_REJECTIONS = Counter(
    "accord_fence_rejections_total",
    "Writes refused because their fencing token was no longer the lock's.",
    ("namespace",),
    registry=REGISTRY,
)

# --- substrate ------------------------------------------------------------------------------
GROUP_COMMIT_BATCH_SIZE = Histogram(
    "accord_group_commit_batch_size",
    "Writes sent to etcd together in one group-commit transaction.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
ETCD_TXN_SECONDS = Histogram(
    "accord_etcd_txn_seconds",
    "Time of one etcd transaction, as this replica saw it.",
    buckets=ETCD_BUCKETS,
    registry=REGISTRY,
)
IDEMPOTENT_REPLAYS = Counter(
    "accord_idempotent_replays_total",
    "Retried mutations answered from their stored first answer.",
    ("namespace",),
    registry=REGISTRY,
)
STREAMS_OPEN = Gauge(
    "accord_streams_open",
    "Streams open on this replica, by kind.",
    ("kind",),  # watch | subscribe | vote_watch | keepalive | lock_wait | y_websocket
    registry=REGISTRY,
)
ETCD_UP = Gauge(
    "accord_etcd_up",
    "1 while etcd answers this replica, 0 otherwise.",
    registry=REGISTRY,
)
ETCD_LEADER_CHANGES = Counter(
    "accord_etcd_leader_changes_total",
    "Changes of the etcd leader this replica has seen.",
    registry=REGISTRY,
)

# --- sessions, votes, leases ----------------------------------------------------------------
SESSIONS_LOADED = Gauge(
    "accord_sessions_loaded",
    "Session documents held in this replica's memory.",
    registry=REGISTRY,
)
SESSION_UPDATE_DELIVERY_SECONDS = Histogram(
    "accord_session_update_delivery_seconds",
    "Time from a session update's arrival at this replica to its send to a subscriber.",
    buckets=DELIVERY_BUCKETS,
    registry=REGISTRY,
)
VOTES_OPEN = Gauge(
    "accord_votes_open",
    "Open votes (every replica follows all of them: the same on each).",
    ("namespace",),
    registry=REGISTRY,
)
VOTES_DECIDED = Counter(
    "accord_votes_decided_total",
    "Votes decided, by outcome.",
    ("namespace", "outcome"),
    registry=REGISTRY,
)
LEASES_GRANTED = Counter(
    "accord_leases_granted_total",
    "Leases granted.",
    ("namespace",),
    registry=REGISTRY,
)
LEASES_EXPIRED = Counter(
    "accord_leases_expired_total",
    "Leases that ended while kept alive on this replica (expired, or ended by another).",
    ("namespace",),
    registry=REGISTRY,
)


# --- effects --------------------------------------------------------------------------------
EFFECT_BEGINS = Counter(
    "accord_effect_begins_total",
    "Effects.Begin answers, by outcome (proceed | done | in_doubt | busy).",
    ("namespace", "outcome"),
    registry=REGISTRY,
)
EFFECT_COMPLETES = Counter(
    "accord_effect_completes_total",
    "Effect outcomes recorded, by state (succeeded | failed), not counting replays.",
    ("namespace", "state"),
    registry=REGISTRY,
)
EFFECT_ABORTS = Counter(
    "accord_effect_aborts_total",
    "Effect claims released without an outcome.",
    ("namespace",),
    registry=REGISTRY,
)


class _Namespaces:
    """The namespaces this process labels by name: the first `cap` it was asked about."""

    __slots__ = ("cap", "lock", "named")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.named: set[str] = set()
        self.lock = threading.Lock()  # labelled from the event loop, and maybe a thread


class _State:
    """Whether this process keeps metrics, and the namespaces it labels."""

    __slots__ = ("namespaces", "on")

    def __init__(self) -> None:
        self.on = False
        self.namespaces = _Namespaces(DEFAULT_MAX_NAMESPACES)


_state = _State()


def configure(*, enabled: bool, max_namespaces: int = DEFAULT_MAX_NAMESPACES) -> None:
    """Switch metrics on or off for this process and set the namespace cap (at startup,
    before any call is served; the namespaces labelled so far are forgotten)."""
    if max_namespaces < 1:
        raise ValueError("max_namespaces must be at least 1")
    _state.on = enabled
    _state.namespaces = _Namespaces(max_namespaces)


def enabled() -> bool:
    """Whether this process keeps metrics (it serves /metrics). Code on a hot path asks
    before it updates a metric."""
    return _state.on


def namespace_label(namespace: str) -> str:
    """The namespace label value for namespace: the namespace itself if it is one of the
    first `max_namespaces` this process labelled, `_other` otherwise. Call it only for a
    namespace the caller was authorized in (or, with auth off, a valid one)."""
    known = _state.namespaces
    if namespace in known.named:
        return namespace
    with known.lock:
        if len(known.named) < known.cap:
            known.named.add(namespace)
            return namespace
    return OTHER_NAMESPACES


# Go's spelling of each status code (codes.Code.String()), as go-grpc-prometheus labels it.
CODE_LABELS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
