"""Shared resources bounded per peer id, per source network and in total (pure, no I/O).

Fresh peer ids cost nothing and one host may hold many addresses, so a limit per peer id alone
lets one machine take everything. Every shared resource meshnat hands out (relay reservations
and circuits, tunnel streams, reflection streams, traversals, punches) is bounded three ways:
per peer id, per source network (an IPv4 /24 or an IPv6 /56, `network_of`) and in total. The
per-network cap is the fair share (go-libp2p's relay: 8 per IP, 32 per ASN). Two more rules keep
room for newcomers when several networks hold their full share:

- an IPv6 **site** (the /48 around a /56, `site_of`: one IPv6 customer commonly holds a /48,
  i.e. 256 /56s) holds at most `per_site` slots, half the total by default (an IPv4 /24 is its
  own site: the /16 around it is many unrelated customers, CGNAT pools included);
- the last `reserve` slots (an eighth of the total by default) go only to networks that hold
  none yet, so a network arriving after others filled their shares still finds one.

Neither stops an attacker holding many unrelated networks from filling what they leave; that
takes `total` slots' worth of networks, not one host.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network

from meshnat.errors import ConfigError

IPV4_NETWORK_BITS = 24
IPV6_NETWORK_BITS = 56
IPV6_SITE_BITS = 48


RELAYED = "relayed"
"""The network of a request over a relay, whose own address is unknown (py-libp2p reports the
relay's): all such requests share one network's share."""


def network_of(ip: IPv4Address | IPv6Address) -> str:
    """The source network an address counts for: its IPv4 /24 or its IPv6 /56."""
    bits = IPV4_NETWORK_BITS if ip.version == 4 else IPV6_NETWORK_BITS
    return str(ip_network(f"{ip}/{bits}", strict=False))


def site_of(network: str) -> str:
    """The site around a network: the /48 of an IPv6 network, an IPv4 network itself; labels
    (`relayed via <network>`) map to the label of the site, anything else to itself."""
    label, sep, inner = network.rpartition(" ")
    try:
        net = ip_network(inner if sep else network)
    except ValueError:
        return network
    wide = net.version == 6 and net.prefixlen > IPV6_SITE_BITS
    site = str(net.supernet(new_prefix=IPV6_SITE_BITS)) if wide else str(net)
    return f"{label} {site}" if sep else site


@dataclass(frozen=True, slots=True)
class Claim:
    """One slot held by `peer` from `network`; give it back with `SlotLimit.release`."""

    peer: str
    network: str


class SlotLimit:
    """Concurrent slots: at most `per_peer` per peer id, `per_network` per network, `total`.

    Also at most `per_site` per IPv6 site (`site_of`; default: half the total, at least
    `per_network`), and the last `reserve` slots (default: an eighth of the total, 0 below 8)
    only for networks holding none. `acquire` returns a `Claim`, or None when a bound is reached
    (`last_refusal` names which: `"peer"`, `"network"`, `"site"`, `"reserve"` or `"total"`).
    Memory is bounded by `total`: only held slots are kept.
    """

    def __init__(self, *, total: int, per_peer: int, per_network: int,
                 per_site: int | None = None, reserve: int | None = None) -> None:
        per_site = max(per_network, total // 2) if per_site is None else per_site
        reserve = total // 8 if reserve is None else reserve
        if (not 1 <= per_peer <= total or not 1 <= per_network <= per_site <= total
                or not 0 <= reserve < total):
            raise ConfigError(f"bad slot limit: total={total} per_peer={per_peer} "
                              f"per_network={per_network} per_site={per_site} reserve={reserve}")
        self.total, self.per_peer, self.per_network = total, per_peer, per_network
        self.per_site, self.reserve = per_site, reserve
        self._peers: Counter[str] = Counter()
        self._networks: Counter[str] = Counter()
        self._sites: Counter[str] = Counter()
        self.held = 0
        self.last_refusal: str | None = None
        self.refused: Counter[str] = Counter()

    def acquire(self, peer: str, network: str) -> Claim | None:
        """Take a slot for `peer` on `network`, or None (counted in `refused`) if bounded."""
        site = site_of(network)
        holds = self._networks[network]
        refusal = ("total" if self.held >= self.total
                   else "network" if holds >= self.per_network
                   else "site" if self._sites[site] >= self.per_site
                   else "reserve" if holds and self.held >= self.total - self.reserve
                   else "peer" if self._peers[peer] >= self.per_peer
                   else None)
        self.last_refusal = refusal
        if refusal is not None:
            self.refused[refusal] += 1
            return None
        self._peers[peer] += 1
        self._networks[network] += 1
        self._sites[site] += 1
        self.held += 1
        return Claim(peer, network)

    def release(self, claim: Claim) -> None:
        """Give back a slot `acquire` handed out (once)."""
        for counts, key in ((self._peers, claim.peer), (self._networks, claim.network),
                            (self._sites, site_of(claim.network))):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
        self.held -= 1

    def held_by_network(self, network: str) -> int:
        return self._networks[network]

    def held_by_peer(self, peer: str) -> int:
        return self._peers[peer]
