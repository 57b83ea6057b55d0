"""Token buckets for request rates: one per namespace, one per principal or agent.

A bucket holds at most rate x burst_seconds tokens and refills continuously; a request
takes one, and a large write one more per started TOKEN_BYTES of it (admission.py), so
bytes pushed through etcd are paced too. Refilling is computed when the bucket is touched
(no timer), so admitting a request costs a dict lookup and a few float operations.
Buckets are per replica: the cluster-wide rate a namespace can reach is the number of
replicas times its limit.

A refused caller is told when to come back: the first, when the next token is there; each
further one refused meanwhile, one token's time after the previous (so a fleet refused at
once returns spread out at the rate instead of all at the next token, which would refuse
all but one of them again), at most MAX_WAIT_SECONDS ahead.

Error handling: `take` never raises; it answers how long to wait (0: taken now), which
becomes the refusal's RetryInfo.
"""

from __future__ import annotations

MAX_WAIT_SECONDS = 60.0


class TokenBucket:
    __slots__ = ("_at", "_promised", "_tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self._tokens = tokens
        self._at = now
        self._promised = now  # the latest time a refused caller was told to come back

    def take(self, rate: float, burst_seconds: float, now: float, cost: float = 1.0) -> float:
        """Take cost tokens: 0.0 when taken, else the seconds until this caller should
        come back."""
        if rate <= 0:
            return MAX_WAIT_SECONDS  # a zero rate refuses everything
        capacity = max(cost, rate * burst_seconds)  # a costly call can always be served
        tokens = min(capacity, self._tokens + (now - self._at) * rate)
        self._at = now
        if tokens >= cost - 1e-9:  # float dust must not cost a caller its token
            self._tokens = max(0.0, tokens - cost)
            return 0.0
        self._tokens = tokens
        # Each refused caller gets a slot of its own after those already given out, so a
        # crowd refused together comes back spread at the rate, not all at the next token.
        soonest = now + (cost - tokens) / rate
        self._promised = min(max(soonest, self._promised + cost / rate), now + MAX_WAIT_SECONDS)
        return self._promised - now


class Buckets:
    """Buckets by name, created full on first use. Idle buckets are dropped now and then,
    so a stream of distinct agent ids cannot grow this without bound."""

    MAX_BUCKETS = 100_000

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def take(
        self, name: str, rate: float, burst_seconds: float, now: float, cost: float = 1.0
    ) -> float:
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._buckets.clear()  # all refill to full: at worst one extra burst each
            bucket = self._buckets[name] = TokenBucket(max(1.0, rate * burst_seconds), now)
        return bucket.take(rate, burst_seconds, now, cost)

    def __len__(self) -> int:
        return len(self._buckets)
