"""Sequential specifications for the checker.

Register: a single value with read, write and compare-and-set on the value; the textbook
object, used by the checker's self-tests.

KvRegister: one Accord KV key as clients see it: a value and its mod_revision. A read
answers both; a write answers the revision it committed at; a compare-and-set expects a
mod_revision. A write whose outcome is unknown leaves the key holding its value at an
unknown revision, which the next read that sees the value pins down.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from tests.linearizability.history import INDETERMINATE

# Register inputs: ("read",) -> value; ("write", v) -> None; ("cas", old, new) -> bool.
RegisterState = Hashable


class Register:
    def __init__(self, initial: Hashable = None) -> None:
        self.initial = initial

    def init(self) -> RegisterState:
        return self.initial

    def step(self, state: RegisterState, input: Hashable, output: Hashable) -> Iterable[Hashable]:
        assert isinstance(input, tuple)
        kind = input[0]
        if kind == "read":
            if output is INDETERMINATE or output == state:
                return (state,)
            return ()
        if kind == "write":
            return (input[1],)
        if kind == "cas":
            _, old, new = input
            if output is INDETERMINATE:
                return (new,) if state == old else ()
            if output:
                return (new,) if state == old else ()
            return (state,) if state != old else ()
        raise ValueError(f"unknown register operation {input!r}")


# KvRegister state: (value or None when absent, mod_revision; None when unknown).
KvState = tuple[bytes | None, int | None]
# KvRegister inputs and outputs:
#   ("get",)                 -> (value or None, mod_revision or 0)
#   ("put", value)           -> revision
#   ("cas", expected, value) -> ("ok", revision) | ("failed",)   (expected: a mod_revision,
#                               0 = the key must be absent)
#   ("delete",)              -> revision


class KvRegister:
    def init(self) -> KvState:
        return (None, 0)

    def step(self, state: KvState, input: Hashable, output: Hashable) -> Iterable[KvState]:
        assert isinstance(input, tuple)
        value, revision = state
        kind = input[0]
        if kind == "get":
            if output is INDETERMINATE:
                return (state,)
            assert isinstance(output, tuple)
            seen_value, seen_revision = output
            if seen_value != value:
                return ()
            if revision is None:  # an unknown write's revision, seen now
                return ((value, seen_revision),)
            return (state,) if seen_revision == revision else ()
        if kind == "put":
            written = input[1]
            return ((written, None if output is INDETERMINATE else output),)  # type: ignore[list-item]
        if kind == "cas":
            _, expected, written = input
            could_match = revision is None or revision == expected
            if output is INDETERMINATE:
                return ((written, None),) if could_match else ()
            assert isinstance(output, tuple)
            if output[0] == "ok":
                return ((written, output[1]),) if could_match else ()
            return (state,) if revision != expected else ()
        if kind == "delete":
            return ((None, 0),)
        raise ValueError(f"unknown KV operation {input!r}")
