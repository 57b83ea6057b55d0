"""A wheel that maps folders onto `accord` (the pinned client exports are unit tests:
tests/unit/test_client_export_list.py)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.harness import REPO


def test_wheel_maps_folders_onto_the_accord_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("accord-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "accord/client/__init__.py",
        "accord/client/py.typed",
        "accord/coordinator/server.py",
        "accord/coordinator/py.typed",
        "accord/v1/kv_pb2.py",
        "accord/v1/kv_pb2.pyi",
        "accord/v1/kv.proto",
    ]:
        assert expected in names, expected
    assert not any(n.startswith(("client/", "coordinator/", "tests/")) for n in names)
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = (
        "import accord.client, accord.coordinator.server, accord.v1.kv_pb2 as kv; "
        "print(accord.client.__file__); print(kv.KeyValue.DESCRIPTOR.full_name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    path, full_name = out.stdout.split()
    assert path.startswith(str(unpacked)) and full_name == "accord.v1.KeyValue"
