"""`accord serve`'s metrics flags are checked before anything starts: a --metrics-listen
that is not host:port, or a namespace cap out of range, is a usage error (exit 2); and
under --workers, port 0 (each worker a free port) and off pass on unchanged."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from accord.coordinator.cli import app
from accord.coordinator.workers import metrics_address


@pytest.mark.parametrize(
    "flags",
    [
        ["--metrics-listen", "nonsense"],
        ["--metrics-listen", "127.0.0.1:http"],
        ["--metrics-listen", "127.0.0.1:70000"],
        ["--metrics-max-namespaces", "0"],
    ],
)
def test_a_bad_metrics_flag_is_a_usage_error(flags: list[str]) -> None:
    result = CliRunner().invoke(app, ["serve", *flags])
    assert result.exit_code == 2
    assert flags[0] in result.output


def test_a_worker_metrics_address_of_port_0_or_off_is_passed_on() -> None:
    assert [metrics_address("127.0.0.1:0", i) for i in range(2)] == ["127.0.0.1:0"] * 2
    assert metrics_address("", 1) == ""
