"""Per-key token buckets with bounded memory (pure: time comes in as `now`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from meshnat.errors import ConfigError


class RateLimiter:
    """`rate` requests per second per key, bursts of up to `burst`.

    At most `max_keys` buckets are kept; the least recently seen key is forgotten first, which
    can only ever be generous to that key, never starve another.
    """

    def __init__(self, *, rate: float, burst: int, max_keys: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ConfigError(f"bad rate limit: rate={rate} burst={burst} max_keys={max_keys}")
        self._rate, self._burst, self._max_keys = rate, float(burst), max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def allow(self, key: Hashable, now: float) -> bool:
        """Take one token for `key` if it has one."""
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
