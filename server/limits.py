"""Per-connection message rate limit: a token bucket plus a count of refusals in a row.

    bucket = RateLimiter(rate=200, burst=400, strikes=50)
    verdict = bucket.take(time.monotonic())   # "ok" | "refuse" | "close"

A message arriving with the bucket empty is refused (`rate_limited`); once
`strikes` messages in a row have been refused the connection is closed (1008).
Any accepted message resets the strike count.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    """Token bucket: `rate` tokens per second, at most `burst` stored; one token per message."""

    rate: float  # tokens added per second
    burst: int  # bucket size
    strikes: int  # refusals in a row before the verdict becomes "close"
    _tokens: float = field(init=False)
    _last: float | None = field(init=False, default=None)
    refused_in_a_row: int = field(init=False, default=0)
    refused_total: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.strikes < 1:
            raise ValueError(f"RateLimiter: rate ({self.rate}), burst ({self.burst}) and strikes "
                             f"({self.strikes}) must be positive")
        self._tokens = float(self.burst)

    def take(self, now: float) -> str:
        """Spend a token for one message at time `now` (seconds, monotonic): "ok", "refuse" or "close"."""
        if self._last is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.refused_in_a_row = 0
            return "ok"
        self.refused_in_a_row += 1
        self.refused_total += 1
        return "close" if self.refused_in_a_row > self.strikes else "refuse"


class AddressBuckets:
    """A `RateLimiter` per client address, made on first sight; addresses whose bucket has refilled are
    forgotten once `max_tracked` are held, so a spray of addresses costs bounded memory."""

    def __init__(self, rate: float, burst: int, max_tracked: int = 4096) -> None:
        self.rate, self.burst, self.max_tracked = rate, burst, max_tracked
        self._buckets: dict[str, RateLimiter] = {}
        self._seen: dict[str, float] = {}

    def take(self, address: str, now: float) -> bool:
        """Spend one token of `address`'s bucket at `now` (monotonic seconds); False when it is empty."""
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_tracked:
                full_after = self.burst / self.rate
                for gone in [a for a, t in self._seen.items() if now - t > full_after]:
                    del self._buckets[gone], self._seen[gone]
            bucket = self._buckets[address] = RateLimiter(self.rate, self.burst, 1 << 30)
        self._seen[address] = now
        return bucket.take(now) == "ok"
