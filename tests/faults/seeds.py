"""The random seed of a fault-suite run: one per test run, printed by each test that uses
it, so a failure can be replayed with ACCORD_FAULT_SEED=N.

It is the same in every pytest-xdist worker of one run (derived from the run's id, which
xdist gives each worker), since the workers must collect the same test names and a seed
is part of a parametrized test's name. Without xdist it is simply random.
"""

from __future__ import annotations

import os
import random


def random_seed(upper: int = 1 << 30) -> int:
    """ACCORD_FAULT_SEED if set; else a seed in [0, upper) chosen once per test run."""
    forced = os.environ.get("ACCORD_FAULT_SEED")
    if forced:
        return int(forced)
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return random.Random(run).randrange(upper) if run else random.randrange(upper)
