"""`MeshConfig`: how a node organizes itself in the mesh."""

from __future__ import annotations

from dataclasses import dataclass

from meshnat.config import require_in_range, require_positive
from meshnat.mesh.reachability import Reachability


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshConfig:
    """What a node joined to the mesh does by itself, and how often."""

    reachability: Reachability | None = None
    """None: measured by dial-backs. PUBLIC or PRIVATE: assumed, never measured (a node
    behind a NAT that knows it, or a test on loopback where every dial-back succeeds)."""

    offer_relay: bool = True
    """Relay circuits for others (public-relay limits) once confirmed public."""

    classify: bool = True
    """Classify this node's NAT whenever its reflectors change (they need two IPs)."""

    target_peers: int = 8
    """Direct connections kept to confirmed-public members, spread over networks."""

    reflectors: int = 5
    """Reflectors asked, one per network (at least 3 are needed for a majority)."""

    relays: int = 2
    """Reservations held, on distinct networks, while behind NAT."""

    relay_refusal_backoff: float = 3600.0
    """Seconds a relay that refused a reservation is left alone (go-libp2p: 1 h)."""

    relay_failure_backoff: float = 60.0
    """Seconds a relay that failed otherwise (unreachable, timeout) is left alone."""

    dialback_confirmations: int = 1
    """Networks whose dial-back must reach this node before it counts as public. One is
    proof (the node witnesses the authenticated inbound connection itself)."""

    dialback_refutations: int = 2
    """Networks whose dial-back must fail (with none reaching it) before it counts as private."""

    dialback_ttl: float = 1800.0
    """Seconds a dial-back result counts; re-asked after half of it."""

    refresh_soon: float = 5.0
    """Seconds after the first DHT refresh (on joining) before the second."""

    refresh_interval: float = 120.0
    """Seconds between DHT refreshes after that."""

    discovery_interval: float = 60.0
    """Seconds between address rediscoveries (and at once when the reflectors change)."""

    republish_interval: float = 120.0
    """Seconds between republishes of an unchanged record (it is re-signed at half its TTL)."""

    record_ttl: int = 600
    """Seconds a published record holds."""

    publish_local: bool = False
    """Also publish interface addresses (for a mesh on one LAN or loopback)."""

    lookup_attempts: int = 3
    """DHT walks a record lookup makes before it gives up (`Mesh.lookup`)."""

    tick: float = 1.0
    """Seconds between looks at the mesh when nothing happened (a connection or identify
    change wakes the node at once)."""

    def __post_init__(self) -> None:
        require_in_range(self, 1, 64, "target_peers", "reflectors", "relays",
                         "dialback_confirmations", "dialback_refutations", "lookup_attempts")
        require_in_range(self, 2, 86_400, "record_ttl")
        require_positive(self, "relay_refusal_backoff", "relay_failure_backoff",
                         "dialback_ttl", "refresh_soon", "refresh_interval",
                         "discovery_interval", "republish_interval", "tick")
