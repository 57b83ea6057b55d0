"""Accord's own metrics, updated where their events happen: one function per event, called
by the primitive at that point (locks, fencing, group commit, etcd, idempotency, streams,
sessions, votes, leases, etcd health). The definitions live in metrics.py.

Cost: every function returns at once while metrics are off (no --metrics-listen), so a
primitive pays one call and one flag test. While on, a labelled child is looked up once
per label set and kept (namespace_label bounds the namespaces, so the children too), and
an event is one inc() or observe(). Labels are only metrics.namespace_label(ns) and fixed
words (lock kind, deadlock policy, vote outcome, stream kind, effect outcome): never a
key, lock, session, vote, effect or run name. Nothing here changes what a call does.

Error handling: nothing here raises; a metric is never a reason for a call to fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from accord.coordinator.observability import metrics
from accord.v1 import locks_pb2

# Lock kinds (accord_lock_wait_seconds, accord_lock_grants_total).
EXCLUSIVE, SHARED, SEMAPHORE = "exclusive", "shared", "semaphore"
# Deadlock policies (accord_deadlocks_total): the victim ends a wait-for cycle, or, when a
# semaphore is involved, lets every stuck lease of a knot finish.
CYCLE, KNOT = "cycle", "knot"
# Stream kinds (accord_streams_open).
WATCH, SUBSCRIBE, VOTE_WATCH, KEEPALIVE, LOCK_WAIT, Y_WEBSOCKET = (
    "watch",
    "subscribe",
    "vote_watch",
    "keepalive",
    "lock_wait",
    "y_websocket",
)

_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """metric's child for labels, made once."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _ns(namespace: str) -> str:
    return metrics.namespace_label(namespace)


# --- locks ---------------------------------------------------------------------------


def lock_kind(mode: int, permits: int) -> str:
    if permits:
        return SEMAPHORE
    return SHARED if mode == locks_pb2.LOCK_MODE_SHARED else EXCLUSIVE


class LockWait:
    """An Acquire's wait in line: when it began, and whether it followed the queue (so
    that a grant after it was handed over by those ahead)."""

    __slots__ = ("began", "followed")

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.followed = False

    def since(self) -> float | None:
        """When the wait began, if the grant was handed over (lock_granted)."""
        return self.began if self.followed else None


def lock_granted(namespace: str, kind: str, waiting_since: float | None) -> None:
    """A grant answered; waiting_since: time.monotonic() when its wait in line began
    (None: it held at once), so the grant was handed to it by those ahead leaving."""
    if not metrics.enabled():
        return
    label = _ns(namespace)
    _child(metrics.LOCK_GRANTS, label, kind).inc()
    if waiting_since is not None:
        _child(metrics.LOCK_HANDOFFS, label).inc()
        _child(metrics.LOCK_WAIT_SECONDS, label, kind).observe(time.monotonic() - waiting_since)


def lock_timed_out(namespace: str) -> None:
    if metrics.enabled():
        _child(metrics.LOCK_TIMEOUTS, _ns(namespace)).inc()


def deadlock_resolved(namespace: str, policy: str) -> None:
    if metrics.enabled():
        _child(metrics.DEADLOCKS, _ns(namespace), policy).inc()


def fence_rejected(namespace: str) -> None:
    if metrics.enabled():
        _child(metrics.FENCE_REJECTIONS, _ns(namespace)).inc()


# --- substrate -----------------------------------------------------------------------


def batch_committed(writes: int) -> None:
    """A group-commit etcd transaction carried this many writes."""
    if metrics.enabled():
        metrics.GROUP_COMMIT_BATCH_SIZE.observe(writes)


def etcd_txn(started: float) -> None:
    """An etcd Txn call (with its retries) that began at time.perf_counter() started
    ended, answered or not."""
    if metrics.enabled():
        metrics.ETCD_TXN_SECONDS.observe(time.perf_counter() - started)


def replayed(namespace: str) -> None:
    """A retried mutation answered from its first attempt's record."""
    if metrics.enabled():
        _child(metrics.IDEMPOTENT_REPLAYS, _ns(namespace)).inc()


# --- streams and sessions ------------------------------------------------------------


class Open:
    """accord_streams_open{kind} counts this stream (or wait) while inside `with`."""

    __slots__ = ("_gauge",)

    def __init__(self, kind: str) -> None:
        self._gauge = _child(metrics.STREAMS_OPEN, kind) if metrics.enabled() else None

    def __enter__(self) -> None:
        if self._gauge is not None:
            self._gauge.inc()

    def __exit__(self, *_: object) -> None:
        if self._gauge is not None:
            self._gauge.dec()


def count_sessions_loaded(count: Callable[[], int]) -> None:
    """accord_sessions_loaded is count() when scraped: nothing on the hot path."""
    metrics.SESSIONS_LOADED.set_function(count)


def update_arrival() -> float:
    """When an update arrived at this replica (0.0: metrics off, not measured)."""
    return time.monotonic() if metrics.enabled() else 0.0


def update_delivered(arrived: float) -> None:
    """A message carrying updates, the oldest arrived at `arrived`, was handed to a
    subscriber's stream."""
    if arrived and metrics.enabled():
        metrics.SESSION_UPDATE_DELIVERY_SECONDS.observe(time.monotonic() - arrived)


# --- votes and leases ----------------------------------------------------------------


def votes_open(namespace: str, change: int) -> None:
    """change: +1 for an open vote's close timer this replica began to track, -1 for one
    it stopped tracking."""
    if metrics.enabled():
        _child(metrics.VOTES_OPEN, _ns(namespace)).inc(change)


def vote_decided(namespace: str, outcome: str) -> None:
    if metrics.enabled():
        _child(metrics.VOTES_DECIDED, _ns(namespace), outcome).inc()


def lease_granted(namespace: str) -> None:
    if metrics.enabled():
        _child(metrics.LEASES_GRANTED, _ns(namespace)).inc()


def lease_expired(namespace: str) -> None:
    if metrics.enabled():
        _child(metrics.LEASES_EXPIRED, _ns(namespace)).inc()


# --- effects -------------------------------------------------------------------------


def effect_began(namespace: str, outcome: str) -> None:
    """A Begin answered: proceed, done, in_doubt (an effect whose executor died was seen)
    or busy."""
    if metrics.enabled():
        _child(metrics.EFFECT_BEGINS, _ns(namespace), outcome).inc()


def effect_completed(namespace: str, state: str) -> None:
    if metrics.enabled():
        _child(metrics.EFFECT_COMPLETES, _ns(namespace), state).inc()


def effect_aborted(namespace: str) -> None:
    if metrics.enabled():
        _child(metrics.EFFECT_ABORTS, _ns(namespace)).inc()


# --- etcd health ---------------------------------------------------------------------


def etcd_health(up: bool, leader_changed: bool) -> None:
    """What the replica's etcd probe saw: whether a member answered, and whether the
    leader it names differs from the one the previous answer named."""
    if not metrics.enabled():
        return
    metrics.ETCD_UP.set(1 if up else 0)
    if leader_changed:
        metrics.ETCD_LEADER_CHANGES.inc()
