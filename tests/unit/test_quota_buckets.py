"""Token buckets (quotas.buckets) and quota limits merged with overrides (quotas.limits):
pure arithmetic, at given instants."""

from __future__ import annotations

import pytest

from accord.coordinator.quotas.buckets import Buckets, TokenBucket
from accord.coordinator.quotas.limits import Limit, QuotaLimits
from accord.coordinator.quotas.sockets import SocketCounts
from accord.v1 import quotas_pb2


def test_a_bucket_allows_its_burst_then_says_when_to_come_back() -> None:
    bucket = TokenBucket(4.0, now=100.0)
    assert [bucket.take(2.0, 2.0, now=100.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(2.0, 2.0, now=100.0) == pytest.approx(0.5)  # one token at 2/s
    assert bucket.take(2.0, 2.0, now=100.5) == 0.0


def test_callers_refused_together_are_told_to_come_back_spread_out() -> None:
    bucket = TokenBucket(1.0, now=0.0)
    assert bucket.take(10.0, 0.1, now=0.0) == 0.0
    waits = [bucket.take(10.0, 0.1, now=0.0) for _ in range(5)]
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # one slot each, at 10/s
    # Coming back as told, each finds its token.
    assert [bucket.take(10.0, 0.1, now=w) for w in waits] == [0.0] * 5


def test_a_bucket_refills_only_to_its_capacity() -> None:
    bucket = TokenBucket(1.0, now=0.0)
    assert bucket.take(10.0, 0.5, now=0.0) == 0.0
    later = 1_000.0  # idle for long: still only 5 tokens (10/s x 0.5 s)
    assert [bucket.take(10.0, 0.5, now=later) for _ in range(5)] == [0.0] * 5
    assert bucket.take(10.0, 0.5, now=later) > 0


def test_a_new_bucket_is_full_at_the_instant_it_is_made() -> None:
    buckets = Buckets()
    assert buckets.take("ns\x00agent", 0.5, 2.0, now=50.0) == 0.0  # capacity 1, taken
    assert buckets.take("ns\x00agent", 0.5, 2.0, now=50.0) == pytest.approx(2.0)
    assert buckets.take("ns\x00other", 0.5, 2.0, now=50.0) == 0.0


def test_a_zero_rate_refuses_everything() -> None:
    assert Buckets().take("ns", 0.0, 2.0, now=1.0) > 0


def test_overrides_replace_only_the_fields_they_set() -> None:
    merged = QuotaLimits().merged(quotas_pb2.QuotaLimits(keys=5, requests_per_second=0.0))
    assert merged.keys == 5 and merged.requests_per_second == 0.0
    assert merged.leases == QuotaLimits().leases
    assert merged.of(Limit.KEYS) == 5
    assert QuotaLimits().merged(None) == QuotaLimits()


def test_socket_counts_refuse_past_either_limit_and_free_on_leave() -> None:
    sockets = SocketCounts(per_session=2, per_address=3)
    assert sockets.enter("ns/doc", "10.0.0.1") is None
    assert sockets.enter("ns/doc", "10.0.0.2") is None
    assert "limit 2" in (sockets.enter("ns/doc", "10.0.0.3") or "")
    assert sockets.enter("ns/other", "10.0.0.1") is None
    assert sockets.enter("ns/third", "10.0.0.1") is None
    assert "limit 3" in (sockets.enter("ns/fourth", "10.0.0.1") or "")
    sockets.leave("ns/doc", "10.0.0.2")
    assert sockets.enter("ns/doc", "10.0.0.3") is None
