"""The history recorder: what an operation's ending makes of it, and its file form."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from accord.client.errors import (
    ConditionFailedError,
    DeadlineExceededError,
    PermissionDeniedError,
    UnavailableError,
)
from tests.faults.recorder import Recorder, load
from tests.linearizability import INDETERMINATE


async def test_outcomes_are_classified() -> None:
    rec = Recorder()
    async with rec.op(1, ("put", b"a"), "k") as done:
        done.output = 7
    async with rec.op(1, ("put", b"b"), "k"):
        raise UnavailableError("gone", code=grpc.StatusCode.UNAVAILABLE)
    async with rec.op(1, ("put", b"c"), "k"):
        raise PermissionDeniedError("no", code=grpc.StatusCode.PERMISSION_DENIED)
    async with rec.op(1, ("get",), "k", mutates=False):
        raise DeadlineExceededError("late", code=grpc.StatusCode.DEADLINE_EXCEEDED)
    async with rec.op(1, ("cas", 7, b"d"), "k") as done:
        try:
            raise ConditionFailedError("moved", code=grpc.StatusCode.FAILED_PRECONDITION)
        except ConditionFailedError:
            done.output = ("failed",)
    assert [(o.input, o.output) for o in rec.operations] == [
        (("put", b"a"), 7),
        (("put", b"b"), INDETERMINATE),
        (("cas", 7, b"d"), ("failed",)),
    ]
    assert rec.operations[1].ret is None
    assert rec.counts["ok"] == 2
    assert rec.counts["indeterminate"] == 2
    assert rec.counts["failed"] == 1


async def test_a_cancelled_write_is_indeterminate_and_cancellation_goes_on() -> None:
    rec = Recorder()
    with pytest.raises(asyncio.CancelledError):
        async with rec.op(1, ("put", b"a"), "k"):
            raise asyncio.CancelledError
    assert rec.operations[0].output is INDETERMINATE


async def test_a_block_that_sets_no_output_is_a_workload_bug() -> None:
    rec = Recorder()
    with pytest.raises(RuntimeError):
        async with rec.op(1, ("get",), "k"):
            pass


async def test_history_files_round_trip(tmp_path: Path) -> None:
    rec = Recorder()
    async with rec.op(2, ("cas", 0, b"\x00v"), ("k", 1)) as done:
        done.output = ("ok", 5)
    async with rec.op(3, ("put", b"x"), ("k", 1)):
        raise UnavailableError("gone", code=grpc.StatusCode.UNAVAILABLE)
    rec.save(tmp_path / "h.jsonl")
    assert load(tmp_path / "h.jsonl") == rec.operations
