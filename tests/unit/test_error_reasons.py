"""The error reasons of the contract (accord.v1.ErrorReason) and the classes on both sides
of it agree: every reason has a coordinator class that raises it and a client class that
it becomes, and the coordinator raises no reason the contract does not have."""

from __future__ import annotations

from accord.client import errors as client_errors
from accord.coordinator.substrate import errors as coordinator_errors
from accord.v1 import common_pb2

PREFIX = "ERROR_REASON_"
UNSPECIFIED = common_pb2.ERROR_REASON_UNSPECIFIED
REASONS = {
    name.removeprefix(PREFIX)
    for name, value in common_pb2.ErrorReason.items()
    if value != UNSPECIFIED
}


def coordinator_classes() -> list[type[coordinator_errors.AccordError]]:
    return [
        value
        for value in vars(coordinator_errors).values()
        if isinstance(value, type) and issubclass(value, coordinator_errors.AccordError)
    ]


def test_every_reason_has_a_client_error_class() -> None:
    missing = REASONS - set(client_errors.BY_REASON)
    assert not missing, f"ErrorReasons without a client exception class: {sorted(missing)}"
    for reason, cls in client_errors.BY_REASON.items():
        assert issubclass(cls, client_errors.AccordError)
        assert cls.REASON is not None and client_errors.reason_name(cls.REASON) == reason


def test_coordinator_errors_use_only_contract_reasons() -> None:
    unknown = {c.__name__: c.reason for c in coordinator_classes() if c.reason not in REASONS}
    assert not unknown, f"coordinator errors with a reason not in ErrorReason: {unknown}"


def test_every_reason_has_a_coordinator_error_class() -> None:
    missing = REASONS - {c.reason for c in coordinator_classes()}
    assert not missing, f"ErrorReasons no coordinator error class raises: {sorted(missing)}"
