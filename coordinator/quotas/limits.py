"""A namespace's quota limits: the replica's defaults, and overrides merged over them.

Defaults are sized to stop a runaway agent without bothering a normal fleet: a namespace
may hold 100,000 keys in 512 MiB, 10,000 leases, 1,000 sessions in 512 MiB, 1,000 open
votes, 100,000 effect records (each bounded in size by the ledger's own checks: the
records' bytes are not counted), 10,000 open streams per replica (the Python client
keeps each lease alive on a stream of its own, so as many as leases), and make 3,000
requests per second per replica (as many for any one principal or agent), with bursts of
two seconds' worth. A batch request counts once (batching is how an agent goes fast); a
large write counts once more per started 64 KiB. The default rates sit above what one
replica serves of small calls (~2,000/s on 2 cores), so they bind on large writes, not
on a busy normal fleet (Accord's own CAS benchmark runs 64 workers as one agent); to
isolate namespaces that share a replica, give a namespace a rate well under that
capacity (`accord quota set`).

Error handling: nothing here raises; a stored override that does not parse is ignored by
the caller (usage.py logs it) and the defaults apply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace

from accord.v1 import quotas_pb2


class Limit(enum.Enum):
    """One quota, named as QuotaFailure's description and the CLI name it."""

    KEYS = "keys"
    BYTES = "bytes"
    LEASES = "leases"
    SESSIONS = "sessions"
    SESSION_BYTES = "session_bytes"
    VOTES_OPEN = "votes_open"
    EFFECTS = "effects"
    STREAMS = "streams"
    REQUESTS_PER_SECOND = "requests_per_second"
    AGENT_REQUESTS_PER_SECOND = "agent_requests_per_second"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaLimits:
    keys: int = 100_000
    bytes: int = 512 * 1024 * 1024
    leases: int = 10_000
    sessions: int = 1_000
    session_bytes: int = 512 * 1024 * 1024
    votes_open: int = 1_000
    effects: int = 100_000
    streams: int = 10_000
    requests_per_second: float = 3_000.0
    agent_requests_per_second: float = 3_000.0
    burst_seconds: float = 2.0

    def of(self, limit: Limit) -> float:
        value: float = getattr(self, limit.value)
        return value

    def merged(self, overrides: quotas_pb2.QuotaLimits | None) -> QuotaLimits:
        """These limits with every field the overrides set replaced."""
        if overrides is None:
            return self
        changed = {f.name: value for f, value in overrides.ListFields()}
        return replace(self, **changed) if changed else self

    def to_proto(self) -> quotas_pb2.QuotaLimits:
        return quotas_pb2.QuotaLimits(**{f.name: getattr(self, f.name) for f in _FIELDS})


_FIELDS = fields(QuotaLimits)
