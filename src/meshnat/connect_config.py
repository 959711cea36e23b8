"""`ConnectConfig`: how `Connector` (connect.py) climbs the ladder and stands on the relay."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshnat.config import require_in_range, require_positive
from meshnat.punch.repunch import RepunchConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectConfig:
    """How Connector climbs the ladder."""

    direct_timeout: float = 3.0
    """Seconds for dialling the peer's own addresses before trying relays."""

    relay_timeout: float = 10.0
    """Seconds for one relay circuit."""

    relay_drain_timeout: float = 120.0
    """Seconds streams still open on a relayed connection may go on after a punch succeeded,
    before that connection is closed (the reference relay's circuit lifetime)."""

    ping_timeout: float = 2.0
    """Seconds for the ping that measures a new path's RTT (the path is returned either way),
    and for each of the two pings a punched path must answer before the relay is let go."""

    repunch: RepunchConfig = field(default_factory=RepunchConfig)
    """When a relayed path is punched, and punched again after a punched path died."""

    suspect_circuit_interval: float = 30.0
    """Minimum seconds between two relay circuits `Connector.suspect` dials beside a peer's
    doubtful punched path. Each failure the application reports on a punched path that then
    answers its pings would otherwise cost the relay one circuit (dialled, then closed once
    the path is confirmed); within the interval the health check alone decides, and a path
    it finds dead is followed by a circuit at once all the same (the repunch supervisor's).
    A peer with no connection left is dialled at once."""

    max_paced_peers: int = 1024
    """Peers whose last such circuit is remembered; the one dialled longest ago is forgotten
    first (which can only let that peer's next circuit come early)."""

    def __post_init__(self) -> None:
        require_positive(self, "direct_timeout", "relay_timeout", "relay_drain_timeout",
                         "ping_timeout", "suspect_circuit_interval")
        require_in_range(self, 1, 1_000_000, "max_paced_peers")
