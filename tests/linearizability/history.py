"""A client history: each operation's invocation and completion, as a test recorded them.

An operation whose outcome the client never learned (a timeout, UNAVAILABLE after the
request may have been sent, a process killed mid-call) is *indeterminate*: it has no
completion time and no output, and the checker lets it take effect at any point after its
invocation, or never.

Times are any monotonic clock shared by every recording client (time.monotonic() in one
process, or a clock the recorders agree on); only their order matters.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Final


class _Indeterminate:
    """The output of an operation whose outcome is unknown."""

    _instance: _Indeterminate | None = None

    def __new__(cls) -> _Indeterminate:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "INDETERMINATE"


INDETERMINATE: Final = _Indeterminate()


@dataclass(frozen=True, slots=True)
class Operation:
    """One client call: what it asked (input), what it got (output), and when.

    partition: operations on different partitions never constrain each other (for a KV
    register, the key), so each partition is checked alone (P-compositionality)."""

    client: int
    input: Hashable
    output: Hashable
    call: float
    # None: the call never returned an outcome the client trusts (indeterminate).
    ret: float | None
    partition: Hashable = ""

    def __post_init__(self) -> None:
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation returns ({self.ret}) before it is called ({self.call})")
        if (self.ret is None) != (self.output is INDETERMINATE):
            raise ValueError("an operation is indeterminate exactly when it has no return time")

    @property
    def indeterminate(self) -> bool:
        return self.ret is None


def partitions(history: Iterable[Operation]) -> dict[Hashable, list[Operation]]:
    """The history split by partition, each in invocation order."""
    split: dict[Hashable, list[Operation]] = {}
    for op in history:
        split.setdefault(op.partition, []).append(op)
    for ops in split.values():
        ops.sort(key=lambda o: o.call)
    return split
