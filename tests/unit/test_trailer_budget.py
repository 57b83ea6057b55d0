"""Every error fits the trailer budget: details are cut, generically, saying what was cut."""

from __future__ import annotations

import base64

from google.rpc import error_details_pb2

from accord.coordinator.substrate.errors import (
    DEFAULT_TRAILER_BUDGET,
    AccordError,
    WouldBlock,
    set_trailer_budget,
)
from accord.v1 import kv_pb2, locks_pb2


def trailers(error: AccordError) -> int:
    """Bytes of grpc-message and grpc-status-details-bin as the interceptor sends them."""
    status = error.to_status()
    return len(status.message.encode()) + len(base64.b64encode(status.SerializeToString()))


def info_of(error: AccordError) -> dict[str, str]:
    info = error_details_pb2.ErrorInfo()
    error.to_status().details[0].Unpack(info)
    return dict(info.metadata)


def long_queue(waiters: int) -> locks_pb2.LockWaitStatus:
    entries = [locks_pb2.LockEntry(lease_id=i, agent_id="a" * 128) for i in range(waiters)]
    return locks_pb2.LockWaitStatus(state=locks_pb2.LockState(name="x", waiters=entries))


def test_a_long_list_is_halved_until_it_fits() -> None:
    error = WouldBlock("taken " * 300, details=[long_queue(500)], metadata={"lock": "x"})
    assert trailers(error) <= DEFAULT_TRAILER_BUDGET - 512
    status = locks_pb2.LockWaitStatus()
    error.to_status().details[1].Unpack(status)
    kept = len(status.state.waiters)
    assert 0 < kept < 500
    info = info_of(error)
    assert info["details_truncated"] == f"LockWaitStatus.state.waiters: kept {kept} of 500"
    assert "Describe" in info["details_rest"] and info["lock"] == "x"
    assert len(error.details[0].state.waiters) == 500  # the error itself is untouched


def test_long_bytes_are_emptied_not_cut() -> None:
    failure = kv_pb2.ConditionFailure(key="k")
    failure.current.value = b"v" * 64 * 1024
    error = AccordError("failed", details=[failure])
    assert trailers(error) <= DEFAULT_TRAILER_BUDGET
    kept = kv_pb2.ConditionFailure()
    error.to_status().details[1].Unpack(kept)
    assert kept.key == "k" and kept.current.value == b""
    assert info_of(error)["details_truncated"] == "ConditionFailure.current.value: kept 0 of 65536"


def test_small_errors_are_left_alone() -> None:
    error = WouldBlock("taken", details=[long_queue(3)])
    assert "details_truncated" not in info_of(error)
    assert error.to_status().details[1].value == error.details[0].SerializeToString()


def test_the_budget_is_configurable() -> None:
    try:
        set_trailer_budget(32 * 1024)
        roomy = WouldBlock("taken", details=[long_queue(120)])
        assert "details_truncated" not in info_of(roomy)
        set_trailer_budget(4 * 1024)
        assert trailers(roomy) <= 4 * 1024
    finally:
        set_trailer_budget(DEFAULT_TRAILER_BUDGET)
