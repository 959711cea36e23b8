"""Which traversals peers may start here (pure: time comes in as `now`).

Start rates per peer id, per source network and in total (`RateLimiter`), then open
traversals per peer, per network and in total (`SlotLimit`). A refusal is a value, the
`Refusal` answered to the peer under its request's txid, counted by the bound that refused.
"""

from __future__ import annotations

from collections import Counter

from meshnat.limits import Claim, SlotLimit
from meshnat.ratelimit import RateLimiter
from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.messages import Refusal
from meshnat.wire.error_response import ErrorCode

RATE_BOUNDS = ("peer-rate", "network-rate", "total-rate")


class Admission:
    """The limits on traversals peers start; `refused` counts refusals by bound (`peer-rate`,
    `network-rate`, `total-rate`, `peer`, `network`, `total`, ...)."""

    def __init__(self, config: TraversalConfig) -> None:
        cfg = config
        self._rates = {
            "peer-rate": RateLimiter(rate=cfg.responder_rate, burst=cfg.responder_burst,
                                     max_keys=10_000),
            "network-rate": RateLimiter(rate=cfg.network_rate, burst=cfg.network_burst,
                                        max_keys=10_000),
            "total-rate": RateLimiter(rate=cfg.total_rate, burst=cfg.total_burst, max_keys=1)}
        self._slots = SlotLimit(total=cfg.max_traversals,
                                per_peer=min(cfg.max_per_peer, cfg.max_traversals),
                                per_network=min(cfg.max_per_network, cfg.max_traversals))
        self.refused: Counter[str] = Counter()

    def admit(self, peer: str, network: str, now: float) -> Refusal | None:
        """May `peer` from `network` start a traversal now (start rates)?"""
        for bound, key in zip(RATE_BOUNDS, (peer, network, None), strict=True):
            if not self._rates[bound].allow(key, now):
                return self._refuse(bound, f"too many traversals ({bound})")
        return None

    def claim(self, peer: str, network: str) -> Claim | Refusal:
        """A slot for one more open traversal of `peer` from `network`, or the refusal."""
        claim = self._slots.acquire(peer, network)
        if claim is None:
            bound = self._slots.last_refusal or "total"
            return self._refuse(bound, f"too many traversals open ({bound})")
        return claim

    def release(self, claim: Claim) -> None:
        self._slots.release(claim)

    def _refuse(self, bound: str, reason: str) -> Refusal:
        self.refused[bound] += 1
        return Refusal(ErrorCode.RATE_LIMITED, reason)
