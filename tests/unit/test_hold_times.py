"""A replica's typical lock holds (coordinator/locks/holds.py), the pure part: trusted only
after a few samples, a weighted mean, and bounded memory whatever callers do. The wait
that fails fast on them is tests/locks/test_fail_fast.py."""

from __future__ import annotations

from typing import Any

import pytest

from accord.coordinator.locks import holds
from accord.coordinator.locks.holds import HoldTimes


def _times() -> HoldTimes:
    no_substrate: Any = None  # the pure part never reads etcd
    return HoldTimes(no_substrate)


def test_trusted_after_min_samples_as_a_weighted_mean() -> None:
    times = _times()
    for _ in range(holds.MIN_SAMPLES - 1):
        times.sample("ns", "lock", 1.0)
    assert times.typical("ns", "lock") is None
    times.sample("ns", "lock", 2.0)
    typical, samples = times.typical("ns", "lock") or (0.0, 0)
    assert samples == holds.MIN_SAMPLES
    assert typical == pytest.approx(1.0 + holds.WEIGHT * (2.0 - 1.0))
    assert times.typical("other-ns", "lock") is None  # per namespace and lock


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(holds, "MAX_LOCKS", 8)
    times = _times()
    for i in range(100):
        for _ in range(holds.MIN_SAMPLES):
            times.sample("ns", f"lock-{i}", 1.0)
    assert len(times._typical) == 8
    assert times.typical("ns", "lock-0") is None and times.typical("ns", "lock-99") is not None


def test_a_negative_hold_counts_as_zero() -> None:
    times = _times()
    for _ in range(holds.MIN_SAMPLES):
        times.sample("ns", "lock", -5.0)  # a skewed clock
    assert times.typical("ns", "lock") == (0.0, holds.MIN_SAMPLES)
