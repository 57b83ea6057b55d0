"""The smallest failing window of a history the linearizability checker rejects.

A soak's history can hold tens of thousands of operations; the point where it went wrong
is a handful of them. `failing_window(history, model)` finds:
1. the shortest prefix by invocation time that the checker already rejects, by binary
   search over the cut time (every call and return time). The prefix at a cut time holds
   the operations called by then; one still running at the cut becomes indeterminate
   (its output was not yet known then), so a stale read counts from its return. Any
   linearization of a longer prefix, restricted, linearizes a shorter one (what a
   completed operation saw was written by operations called before it returned), so
   rejection is monotone in the cut and the search is exact;
2. within that prefix, the failing partition (key) and the operations around the point its
   search got stuck: the last `context` operations of the longest order it found, the
   operations it could not place after them (`PartitionResult.stuck`), and the
   operation whose call or return completed the failing prefix, plus every operation of
   the partition overlapping that span in time.

Error handling: a history the checker accepts (or cannot decide in time) has no window
(None); a model that raises propagates, as from `check`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from tests.linearizability import INDETERMINATE, Model, Operation, PartitionResult, check


@dataclass(frozen=True, slots=True)
class Window:
    prefix: int  # operations in the shortest rejected prefix
    cut: float  # its cut time: the call or return that made it fail
    partition: Hashable
    operations: tuple[Operation, ...]  # the window, by call time
    stuck: tuple[Operation, ...]  # the operations the checker could not place
    checks: int  # checker runs the search took


def prefix_at(history: Sequence[Operation], cut: float) -> list[Operation]:
    """The operations called by cut, as the history stood then: one still running is
    indeterminate."""
    return [
        op
        if op.ret is None or op.ret <= cut
        else Operation(op.client, op.input, INDETERMINATE, op.call, None, op.partition)
        for op in history
        if op.call <= cut
    ]


def failing_window(
    history: Sequence[Operation],
    model: Model[Hashable],
    *,
    context: int = 8,
    timeout: float | None = 60,
) -> Window | None:
    """The smallest failing window of history (None: the checker does not reject it)."""
    ops = sorted(history, key=lambda o: o.call)
    checks = 1
    if not ops or check(ops, model, timeout=timeout, explain=False).ok is not False:
        return None
    # Cut candidates: every call and return; an operation constrains others from its return.
    times = sorted({op.call for op in ops} | {op.ret for op in ops if op.ret is not None})
    # Invariant: the history cut at times[high] is rejected; at times[low - 1] it is not.
    low, high = 0, len(times) - 1
    while low < high:
        middle = (low + high) // 2
        checks += 1
        if check(prefix_at(ops, times[middle]), model, timeout=timeout, explain=False).ok is False:
            high = middle
        else:
            low = middle + 1
    cut = times[high]
    prefix = prefix_at(ops, cut)
    checks += 1
    failure = check(prefix, model, timeout=timeout).failures[0]
    last = max((op for op in prefix if cut in (op.ret, op.call)), key=lambda o: o.call)
    return Window(
        prefix=len(prefix),
        cut=cut,
        partition=failure.partition,
        operations=_around(prefix, failure, last, context),
        stuck=failure.stuck,
        checks=checks,
    )


def _around(
    prefix: Sequence[Operation], failure: PartitionResult, last: Operation, context: int
) -> tuple[Operation, ...]:
    """The failing partition's operations overlapping the span from the last `context`
    placed operations to the stuck ones and the one whose call or return made the prefix
    fail."""
    marks = [*failure.order[-context:], *failure.stuck]
    if last.partition == failure.partition:
        marks.append(last)
    start = min(op.call for op in marks)
    end = max(op.call if op.ret is None else op.ret for op in marks)
    return tuple(
        op
        for op in prefix
        if op.partition == failure.partition
        and op.call <= end
        and (op.ret is None or op.ret >= start)
    )


def table(window: Window, origin: float) -> str:
    """The window as a Markdown table, times in seconds from origin."""
    stuck = set(map(id, window.stuck))
    rows = [
        "| client | call (s) | return (s) | input | output | |",
        "|---|---|---|---|---|---|",
    ]
    for op in window.operations:
        ret = "-" if op.ret is None else f"{op.ret - origin:.3f}"
        mark = "stuck" if id(op) in stuck else ""
        rows.append(
            f"| {op.client} | {op.call - origin:.3f} | {ret} | `{op.input!r}` "
            f"| `{op.output!r}` | {mark} |"
        )
    return "\n".join(rows)
