"""The wheel ships every package: pyproject lists them one by one (folders map onto the
`accord` namespace), so a new folder must be added there too."""

from __future__ import annotations

import tomllib

from tests.harness.processes import REPO


def test_every_python_folder_is_a_listed_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = {config["package-dir"][name]: name for name in config["packages"]}
    for top, name in (("coordinator", "accord.coordinator"), ("client", "accord.client")):
        for init in (REPO / top).rglob("__init__.py"):
            folder = init.parent.relative_to(REPO).as_posix()
            parts = init.parent.relative_to(REPO / top).parts
            expected = ".".join((name, *parts))
            assert listed.get(folder) == expected, f"{folder} is not listed as {expected}"
