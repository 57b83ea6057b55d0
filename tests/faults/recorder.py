"""The history recorder: every client operation of a fault run, invoked and completed.

A workload wraps each call:

    async with recorder.op(client=3, input=("put", value), partition=key) as done:
        result = await c.kv.put(key, value)
        done.output = result.revision

and the recorder notes the invocation and completion times (time.monotonic(): one clock,
the test process's) and classifies what the call ended with:
- ok: the block set `done.output`;
- failed: an error that proves the operation had no effect (it was refused before it
  ran: a bad argument, authorization, a quota, a lease that was gone...); kept in the
  counts, left out of the history the checkers read;
- indeterminate: an error after which the operation may or may not have taken effect
  (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, INTERNAL, the connection lost, a client
  process killed). A write is then in the history with INDETERMINATE output; a read
  constrains nothing and is left out.
A workload that knows more (a failed compare-and-set is a real answer) catches that error
inside the block and sets `done.output` itself.

Histories are saved and loaded as JSON lines (soak runs keep them beside their report).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from accord.client.errors import AccordError
from tests.linearizability import INDETERMINATE, Operation

_UNSET: Any = object()
# Codes after which an operation may have taken effect.
AMBIGUOUS_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)


def ambiguous(error: BaseException) -> bool:
    """Whether an operation that raised error may have taken effect anyway."""
    if isinstance(error, AccordError):
        return error.code is None or error.code in AMBIGUOUS_CODES
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in AMBIGUOUS_CODES
    # A timeout or cancellation of our own, a connection error: we cannot know.
    return isinstance(error, asyncio.TimeoutError | asyncio.CancelledError | OSError)


@dataclass
class Done:
    """What the block fills in: the operation's output when it completed."""

    output: Hashable = _UNSET


@dataclass
class Recorder:
    operations: list[Operation] = field(default_factory=list)
    # ok, failed, indeterminate, and errors by class name
    counts: Counter[str] = field(default_factory=Counter)

    @asynccontextmanager
    async def op(
        self,
        client: int,
        input: tuple[Hashable, ...],
        partition: Hashable = "",
        *,
        mutates: bool = True,
    ) -> AsyncIterator[Done]:
        """Record one operation; mutates=False for a read (an unknown outcome drops it)."""
        call = time.monotonic()
        done = Done()
        try:
            yield done
        except BaseException as error:
            self.counts[type(error).__name__] += 1
            if not ambiguous(error):
                self.counts["failed"] += 1
                if isinstance(error, Exception):
                    return  # refused: no effect, nothing to check
                raise
            self.counts["indeterminate"] += 1
            if mutates:
                self.operations.append(
                    Operation(client, input, INDETERMINATE, call, None, partition)
                )
            if not isinstance(error, Exception):
                raise  # cancellation goes on once recorded
            return
        if done.output is _UNSET:
            raise RuntimeError("an operation's block completed without setting its output")
        self.counts["ok"] += 1
        self.operations.append(
            Operation(client, input, done.output, call, time.monotonic(), partition)
        )

    def save(self, path: Path) -> None:
        with path.open("w") as out:
            for op in self.operations:
                out.write(json.dumps(_encode(op)) + "\n")


def load(path: Path) -> list[Operation]:
    return [_decode(json.loads(line)) for line in path.read_text().splitlines() if line]


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, tuple):
        return {"tuple": [_to_json(v) for v in value]}
    if value is INDETERMINATE:
        return {"indeterminate": True}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "bytes" in value:
            return bytes.fromhex(value["bytes"])
        if "tuple" in value:
            return tuple(_from_json(v) for v in value["tuple"])
        if "indeterminate" in value:
            return INDETERMINATE
    return value


def _encode(op: Operation) -> dict[str, Any]:
    return {
        "client": op.client,
        "input": _to_json(op.input),
        "output": _to_json(op.output),
        "call": op.call,
        "ret": op.ret,
        "partition": _to_json(op.partition),
    }


def _decode(row: dict[str, Any]) -> Operation:
    return Operation(
        row["client"],
        _from_json(row["input"]),
        _from_json(row["output"]),
        row["call"],
        row["ret"],
        _from_json(row["partition"]),
    )
