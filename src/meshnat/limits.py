"""Shared resources bounded per peer id, per source network and in total (pure, no I/O).

Fresh peer ids cost nothing and one host may hold many addresses, so a limit per peer id alone
lets one machine take everything. Every shared resource meshnat hands out (relay reservations
and circuits, tunnel streams, reflection streams, traversals, punches) is bounded three ways:
per peer id, per source network (an IPv4 /24 or an IPv6 /56, `network_of`) and in total. The
per-network cap is the fair share: with `total` slots and `per_network` of them at most to any
one network, a newcomer from another network finds a slot until `total // per_network`
networks are full (go-libp2p's relay: 8 per IP, 32 per ASN).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network

from meshnat.errors import ConfigError

IPV4_NETWORK_BITS = 24
IPV6_NETWORK_BITS = 56


def network_of(ip: IPv4Address | IPv6Address) -> str:
    """The source network an address counts for: its IPv4 /24 or its IPv6 /56."""
    bits = IPV4_NETWORK_BITS if ip.version == 4 else IPV6_NETWORK_BITS
    return str(ip_network(f"{ip}/{bits}", strict=False))


@dataclass(frozen=True, slots=True)
class Claim:
    """One slot held by `peer` from `network`; give it back with `SlotLimit.release`."""

    peer: str
    network: str


class SlotLimit:
    """Concurrent slots: at most `per_peer` per peer id, `per_network` per network, `total`.

    `acquire` returns a `Claim`, or None when a bound is reached (`last_refusal` names which:
    `"peer"`, `"network"` or `"total"`). Memory is bounded by `total`: only held slots are kept.
    """

    def __init__(self, *, total: int, per_peer: int, per_network: int) -> None:
        if not 1 <= per_peer <= total or not 1 <= per_network <= total:
            raise ConfigError(f"bad slot limit: total={total} per_peer={per_peer} "
                              f"per_network={per_network}")
        self.total, self.per_peer, self.per_network = total, per_peer, per_network
        self._peers: Counter[str] = Counter()
        self._networks: Counter[str] = Counter()
        self.held = 0
        self.last_refusal: str | None = None
        self.refused: Counter[str] = Counter()

    def acquire(self, peer: str, network: str) -> Claim | None:
        """Take a slot for `peer` on `network`, or None (counted in `refused`) if bounded."""
        refusal = ("total" if self.held >= self.total
                   else "network" if self._networks[network] >= self.per_network
                   else "peer" if self._peers[peer] >= self.per_peer
                   else None)
        self.last_refusal = refusal
        if refusal is not None:
            self.refused[refusal] += 1
            return None
        self._peers[peer] += 1
        self._networks[network] += 1
        self.held += 1
        return Claim(peer, network)

    def release(self, claim: Claim) -> None:
        """Give back a slot `acquire` handed out (once)."""
        for counts, key in ((self._peers, claim.peer), (self._networks, claim.network)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
        self.held -= 1

    def held_by_network(self, network: str) -> int:
        return self._networks[network]

    def held_by_peer(self, peer: str) -> int:
        return self._peers[peer]
