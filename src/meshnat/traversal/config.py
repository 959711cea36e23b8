"""`TraversalConfig`: how traversals probe, keep pairs alive, hand them over, and what peers
may start here (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from meshnat.config import require_in_range, require_positive
from meshnat.traversal.messages import MAX_PADDING


@dataclass(frozen=True, slots=True, kw_only=True)
class TraversalConfig:
    """How traversals probe, keep pairs alive and hand them over."""

    probe_interval: float = 0.05
    """Seconds between probes to candidates that have not answered (ICE's Ta)."""
    probe_timeout: float = 10.0
    """Seconds a candidate is probed before it is given up."""
    keepalive_interval: float = 5.0
    """Seconds between keepalives on an alive pair (well under NAT UDP timeouts of 30 s+)."""
    pair_timeout: float = 20.0
    """Seconds without hearing the peer on a pair before it is reported expired."""
    take_deadline: float = 10.0
    """Seconds a taken pair may wait for the transport before it is reported expired."""
    stream_timeout: float = 5.0
    """Seconds for each coordination exchange and for the QUIC handshake on a pair."""
    unproven_interval: float = 0.5
    """Longest gap, seconds, between probes to a candidate whose IP is not proven yet: they
    start `probe_interval` apart and back off by doubling to this (ICE's RTO is >= 500 ms)."""
    offer_padding: int = 320
    """Padding bytes this node puts in its Offers: the peer sends at most 3x an Offer's bytes
    to each network (/24, /56) of this node's candidate IPs before one is proven, so this pays
    for ~19 probes per network."""
    max_traversals: int = 16
    """Traversals peers may have open here at once; more are refused."""
    max_per_network: int = 4
    """Traversals peers of one source network (IPv4 /24, IPv6 /56; over a relay: the relay's
    network) may have open here at once: a fair share, 4 networks fill `max_traversals`."""
    responder_rate: float = 0.5
    """Traversals per second a peer may start here (each makes this node probe up to 8
    endpoints of the peer's choosing), so a peer cannot turn it into a traffic source."""
    responder_burst: int = 8
    """Traversals a peer may start at once before `responder_rate` applies."""
    network_rate: float = 1.0
    """Traversals per second peers of one source network may start here."""
    network_burst: int = 8
    """Traversals one source network may start at once before `network_rate` applies."""
    total_rate: float = 4.0
    """Traversals per second all peers together may start here."""
    total_burst: int = 16
    """Traversals all peers may start at once before `total_rate` applies."""
    max_per_peer: int = 2
    """Traversals one peer may have open here at once (this node's own are not counted):
    half of `max_per_network`, so one peer id cannot hold a whole network's share (over a
    relay every peer behind it counts for the relay's network); two fresh ids still can."""
    max_untaken: float = 300.0
    """Seconds a traversal may run without a pair being taken before it is forgotten."""

    def __post_init__(self) -> None:
        require_positive(self, "probe_interval", "probe_timeout", "keepalive_interval",
                         "pair_timeout", "take_deadline", "stream_timeout", "max_traversals",
                         "responder_rate", "responder_burst", "max_per_peer", "max_untaken",
                         "unproven_interval", "max_per_network", "network_rate",
                         "network_burst", "total_rate", "total_burst")
        require_in_range(self, 0, MAX_PADDING, "offer_padding")
