"""When this node publishes its signed record in the DHT again (pure)."""

from __future__ import annotations


class Republisher:
    """Publish when the record changed (a new `seq`), every `interval` seconds so servers
    that joined closer to the key get it before the copies held expire, and `retry` seconds
    after a failed publish."""

    def __init__(self, *, interval: float = 120.0, retry: float = 2.0) -> None:
        self.interval, self.retry = interval, retry
        self.seq: int | None = None
        self._next = 0.0

    def due(self, seq: int, now: float) -> bool:
        return seq != self.seq or now >= self._next

    def published(self, seq: int, now: float, *, stored: bool) -> None:
        """A publish of `seq` ended; `stored` if at least one server (or this one) holds it."""
        self.seq = seq
        self._next = now + (self.interval if stored else self.retry)
