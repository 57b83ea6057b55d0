"""When and how the client retries: until the call's deadline, with backoff and jitter,
paced by a retry budget, and the server's pushback (RetryInfo) honoured.

A call declared safe that meets UNAVAILABLE is sent again until its deadline, not for a
fixed number of attempts: at once to another replica that is up, else when the first
replica is due a probe (`down_for`, see `accord.client.replicas`). `max_attempts` caps the
attempts only when set. Every retry spends a token from a budget that successes refill
(as gRPC's retry throttling does); a client whose budget is spent does not fail its calls
early but spaces each one's retries by about max_backoff, so a fleet slows down instead of
hammering a sick service. A refusal with RetryInfo is retried after the delay asked, and
raised at once when the budget is spent or the deadline would pass first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from accord.client.errors import AccordError, QuotaExceededError, retry_after


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    # Attempts per call, the first included; None: as many as the deadline allows.
    max_attempts: int | None = None
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    # Retries spend tokens from a bucket that successes refill, so a sick service is not
    # hammered by every client at once (as gRPC's retry throttling does): with none left,
    # an UNAVAILABLE call is resent only after about max_backoff, a pushback one not at all.
    budget_tokens: float = 20.0
    budget_refill_per_success: float = 0.2

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * multiplier**attempt)]."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return random.uniform(0, ceiling)

    def down_for(self, failures: int) -> float:
        """How long a replica that failed failures calls in a row waits for its next probe:
        the ceiling as in backoff, half of it jittered (never ~0, so probes stay spaced)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**failures)
        return ceiling * random.uniform(0.5, 1.0)


@dataclass(kw_only=True)
class RetryBudget:
    policy: RetryPolicy
    tokens: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.policy.budget_tokens

    def try_spend(self) -> bool:
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def refill(self) -> None:
        self.tokens = min(
            self.policy.budget_tokens, self.tokens + self.policy.budget_refill_per_success
        )


def pushback(error: AccordError, bound: float) -> float | None:
    """How long to wait before opening a stream again (or resending a push) that a quota
    or rate refused: its RetryInfo, with up to a tenth more to spread a fleet. None when
    the error is not such a refusal, or asks for longer than bound (a count quota frees
    only when something is deleted: the caller should hear of it)."""
    if not isinstance(error, QuotaExceededError):
        return None
    delay = retry_after(error)
    if delay is None or delay > bound:
        return None
    return delay * random.uniform(1.0, 1.1)
