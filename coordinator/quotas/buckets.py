"""Token buckets for request rates: one per namespace, one per principal or agent.

A bucket holds at most rate x burst_seconds tokens and refills continuously; a request
takes one. Refilling is computed when the bucket is touched (no timer), so admitting a
request costs a dict lookup and a few float operations. Buckets are per replica: the
cluster-wide rate a namespace can reach is the number of replicas times its limit.

Error handling: `take` never raises; it answers how long until a token is there (0: taken
now), which becomes the refusal's RetryInfo.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_at", "_tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self._tokens = tokens
        self._at = now

    def take(self, rate: float, burst_seconds: float, now: float) -> float:
        """Take one token: 0.0 when taken, else the seconds until one is there."""
        if rate <= 0:
            return 60.0  # a zero rate refuses everything; look again in a minute
        capacity = max(1.0, rate * burst_seconds)
        tokens = min(capacity, self._tokens + (now - self._at) * rate)
        self._at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / rate


class Buckets:
    """Buckets by name, created full on first use. Idle buckets are dropped now and then,
    so a stream of distinct agent ids cannot grow this without bound."""

    MAX_BUCKETS = 100_000

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, name: str, rate: float, burst_seconds: float, now: float) -> float:
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._buckets.clear()  # all refill to full: at worst one extra burst each
            bucket = self._buckets[name] = TokenBucket(max(1.0, rate * burst_seconds), now)
        return bucket.take(rate, burst_seconds, now)

    def __len__(self) -> int:
        return len(self._buckets)
