"""The hole puncher's settings (`PunchConfig`); pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshnat.config import require_in_range, require_positive
from meshnat.punch.health import HealthConfig
from meshnat.punch.messages import MappingHint


@dataclass(frozen=True, slots=True, kw_only=True)
class PunchConfig:
    """How HolePuncher coordinates and punches."""

    probe_interval: float = 0.05
    """Seconds between UDP probe rounds (ICE's Ta is 50 ms)."""

    punch_timeout: float = 3.0
    """Seconds each path (UDP, TCP) may take after Sync before it counts as failed."""

    stream_timeout: float = 5.0
    """Seconds for the coordination exchange (Offer, Offer, Sync)."""

    mapping: MappingHint = MappingHint.UNKNOWN
    """This node's IPv4 mapping behaviour (from discovery or its NatReport; unknown: taken from
    the puncher's discovery's last UDP round at each Offer). One endpoint-dependent side
    against an endpoint-independent one means birthday probing; two give up at once (unless an
    IPv6 path is left)."""

    mapping6: MappingHint = MappingHint.UNKNOWN
    """This node's IPv6 mapping behaviour (from an IPv6 discovery round; unknown: taken from
    the puncher's discovery as for `mapping`): endpoint-independent
    for a global address behind a stateful firewall or NPTv6; endpoint-dependent behind a
    NAT66 that is, which takes the IPv6 traversal out of the punch. Unknown counts as not
    endpoint-dependent (the IPv6 traversal is tried)."""

    health: HealthConfig = field(default_factory=HealthConfig)
    """How punched connections are pinged (holding their NAT mappings) and found dead."""

    responder_rate: float = 0.2
    """Punches per second a peer may ask of this node (one every 5 s), so a peer cannot turn
    the responder's probes (up to 2048 for birthday probing) into a stream of traffic."""

    responder_burst: int = 3
    """Punches a peer may ask for at once before `responder_rate` applies."""

    birthday_sockets: int = 256
    """Sockets the endpoint-dependent side opens for birthday probing."""

    birthday_max_probes: int = 2048
    """Probes the endpoint-independent side sends at most (2048 ~ 99.9% with 256 sockets)."""

    birthday_probes_per_tick: int = 20
    """Probes sent every 10 ms by the endpoint-independent side (2,000 per second)."""

    offer_padding: int = 512
    """Padding bytes in this node's Offers. The peer sends at most 3x the bytes this node
    sent over the coordination stream to the unproven candidate IPs of each network (/24, /56),
    so this pays for ~30 probes or a TCP dial and ~25 probes per network."""

    max_responding: int = 8
    """Punches this node answers at once (a birthday hard side holds 256 sockets each)."""

    max_responding_per_network: int = 2
    """Punches peers of one source network (IPv4 /24, IPv6 /56; over a relay: the relay's
    network) may have this node answer at once; one per peer id."""

    network_rate: float = 0.5
    """Punches per second peers of one source network may ask of this node."""

    network_burst: int = 6
    """Punches one source network may ask for at once before `network_rate` applies."""

    total_rate: float = 2.0
    """Punches per second all peers together may ask of this node."""

    total_burst: int = 10
    """Punches all peers may ask for at once before `total_rate` applies."""

    def __post_init__(self) -> None:
        require_in_range(self, 1, 65535, "birthday_sockets", "birthday_max_probes",
                         "birthday_probes_per_tick")
        require_in_range(self, 1, 100, "responder_burst", "network_burst", "total_burst")
        require_in_range(self, 0, 3072, "offer_padding")
        require_in_range(self, 1, 1024, "max_responding", "max_responding_per_network")
        require_positive(self, "probe_interval", "punch_timeout", "stream_timeout",
                         "responder_rate", "network_rate", "total_rate")
