"""Named points where a test can make a replica die, or misbehave, to prove a check.

Set ACCORD_FAILPOINTS to a comma-separated list of point names before starting a
replica; reaching a listed point ends the process at once (exit status 137, as SIGKILL
would).

Set ACCORD_TEST_BREAK to a comma-separated list of deliberate bugs, to prove that the
fault suite's checkers (tests/faults) catch a broken server. Known names:
- `fencing.skip_compare`: a fenced write is not checked against its grant at all (no
  early FENCED, no compare in the write's transaction), as if fencing were forgotten.
- `kv.stale_reads`: a get is answered from what the replica last read of the key, for
  half a second, whatever its consistency (kv/breaks.py).
- `watch.drop_one`: a watch opened at a start_revision (a resume) loses its first event
  (kv/breaks.py).
- `votes.skip_open_check`: a ballot is stored without checking that its vote is still
  open (neither by the record read nor in its transaction), so ballots are accepted after
  the decision (votes/decisions.py, votes/store.py).
- `votes.ack_unwritten`: a ballot's transaction writes nothing, yet the Cast is
  acknowledged as stored (votes/store.py).
- `sessions.drop_fanout`: one session update in three reaching a replica is kept from
  its subscribers (sessions/breaks.py).
- `sessions.apply_twice`: a session Apply ignores its request_id, so a retry applies
  again (sessions/breaks.py).
- `sessions.stale_reads`: a session Read is answered with what the replica answered
  for it in the last half second (sessions/breaks.py).

All are read once at import. Unset in production, where `hit` and `broken` cost one
set lookup.

Error handling: none; an unknown name is simply never reached.
"""

from __future__ import annotations

import os


def _names(variable: str) -> frozenset[str]:
    return frozenset(p.strip() for p in os.environ.get(variable, "").split(",") if p.strip())


_ACTIVE = _names("ACCORD_FAILPOINTS")
_BROKEN = _names("ACCORD_TEST_BREAK")


def hit(name: str) -> None:
    if name in _ACTIVE:
        os._exit(137)


def broken(name: str) -> bool:
    """Whether the deliberate bug `name` is switched on (tests only)."""
    return name in _BROKEN
