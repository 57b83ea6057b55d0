"""observability/status.CallLoad: the namespaces ranked by calls over the last minute
(six buckets, turned by a timer), with a bounded number named per bucket."""

from __future__ import annotations

from accord.coordinator.observability.status import BUCKETS, CallLoad


def test_namespaces_are_ranked_by_calls_most_first_ties_by_name() -> None:
    load = CallLoad()
    for namespace, calls in (("b", 3), ("a", 5), ("c", 3), ("d", 1)):
        for _ in range(calls):
            load.counted(namespace)
    assert load.top(3) == ([("a", 5), ("b", 3), ("c", 3)], 0)
    assert load.top(10)[0][-1] == ("d", 1)


def test_calls_are_summed_over_the_window_and_forgotten_after_it() -> None:
    load = CallLoad()
    load.counted("old")
    load.turn()  # a bucket later: still in the window
    load.counted("old")
    load.counted("new")
    assert load.top(10) == ([("old", 2), ("new", 1)], 0)
    for _ in range(BUCKETS - 1):
        load.turn()
    # The first bucket has left the window; the second is the oldest still in it.
    assert load.top(10) == ([("new", 1), ("old", 1)], 0)
    load.turn()
    assert load.top(10) == ([], 0)


def test_namespaces_past_the_cap_are_counted_but_not_named() -> None:
    load = CallLoad(max_namespaces=3)
    for i in range(10):
        load.counted(f"ns-{i}")
    load.counted("ns-0")  # already named: still counted under its name
    named, untracked = load.top(100)
    assert named == [("ns-0", 2), ("ns-1", 1), ("ns-2", 1)]
    assert untracked == 7
