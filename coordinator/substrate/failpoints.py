"""Named points where a test can make a replica die, to reproduce a crash exactly there.

Set ACCORD_FAILPOINTS to a comma-separated list of point names before starting a
replica; reaching a listed point ends the process at once (exit status 137, as SIGKILL
would). Unset in production, where `hit` costs one set lookup.
"""

from __future__ import annotations

import os

_ACTIVE = frozenset(
    p.strip() for p in os.environ.get("ACCORD_FAILPOINTS", "").split(",") if p.strip()
)


def hit(name: str) -> None:
    if name in _ACTIVE:
        os._exit(137)
