"""Is this node reachable from the mesh? Dial-back results folded into one answer (pure).

A result counts per source network of the peer that dialled (IPv4 /24, IPv6 /56), the latest
one per network, until it is `ttl` old. Public takes `confirmations` networks that reached this
node; private takes `refutations` networks that could not, and none that could.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Reachability(StrEnum):
    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


class ReachabilityTracker:
    """Folds dial-back results; `forced` (public or private) overrides every measurement."""

    def __init__(self, *, confirmations: int = 1, refutations: int = 2, ttl: float = 1800.0,
                 retry: float = 30.0, forced: Reachability | None = None) -> None:
        self.confirmations, self.refutations = confirmations, refutations
        self.ttl, self.retry, self.forced = ttl, retry, forced
        self._results: dict[str, tuple[bool, float]] = {}
        self._asked: dict[str, float] = {}

    def record(self, network: str, reached: bool, now: float) -> None:
        """A peer from `network` tried to dial this node back: `reached` if it got through."""
        self._results[network] = (reached, now)

    def status(self, now: float) -> Reachability:
        if self.forced is not None:
            return self.forced
        fresh = [ok for ok, at in self._results.values() if now - at < self.ttl]
        if sum(fresh) >= self.confirmations:
            return Reachability.PUBLIC
        if len(fresh) - sum(fresh) >= self.refutations:
            return Reachability.PRIVATE
        return Reachability.UNKNOWN

    def to_ask(self, candidates: Mapping[str, str], now: float, *, count: int = 2) -> list[str]:
        """Which of `candidates` (peer -> network) to ask now: peers on networks with no
        result younger than half the ttl, each peer at most once per `retry` seconds, one per
        network; none when forced."""
        if self.forced is not None:
            return []
        picked: list[str] = []
        networks: set[str] = set()
        for peer, network in candidates.items():
            result = self._results.get(network)
            if result is not None and now - result[1] < self.ttl / 2:
                continue
            if network in networks or now - self._asked.get(peer, -self.retry) < self.retry:
                continue
            picked.append(peer)
            networks.add(network)
            self._asked[peer] = now
            if len(picked) >= count:
                break
        if len(self._asked) > 4 * len(candidates) + 64:  # bounded: forget long-gone peers
            self._asked = {p: t for p, t in self._asked.items() if now - t < self.retry}
        return picked
