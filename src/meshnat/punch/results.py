"""What punching produces: a punched connection (`Punched`), one path's connection
(`PathOpened`) and the statistics `HolePuncher` and its `PathKeeper` report."""

from __future__ import annotations

from dataclasses import dataclass

from meshnat._libp2p import ID, INetConn
from meshnat.endpoint import Endpoint
from meshnat.paths import PathKind


@dataclass(frozen=True, slots=True)
class PathOpened:
    """One path (UDP or TCP) of a punch opened a direct connection."""

    local: Endpoint
    """This side's end: the port whose NAT mapping the path uses."""
    remote: Endpoint
    """The peer's end of the path."""
    probes_sent: int
    connection: INetConn


@dataclass(frozen=True, slots=True, kw_only=True)
class PathStatistics:
    """What `PathKeeper.statistics()` reports."""

    kept: int
    """Peers whose punched connection is being kept alive now."""
    keepalives_sent: int
    """Keepalive pings answered, over every kept connection."""
    paths_lost: int
    """Kept connections retired as dead (keepalives failed in a row, or closed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PunchStatistics:
    """What `HolePuncher.statistics()` reports: its responder limits, budgets and kept paths."""

    responding: int
    """Punches this node is answering now."""
    refused: dict[str, int]
    """Punches refused, by the bound that refused them: `peer-rate`, `network-rate`,
    `total-rate`, `peer`, `network`, `total`."""
    unproven_bytes: int
    """Bytes sent (headers included) to IPs the peer had not proven: probes, birthday
    probes and TCP SYNs, never above 3x what that peer sent, per destination network (/24,
    /56) and punch."""
    withheld: int
    """Probes or dials not sent because an unproven IP's allowance was spent."""
    paid: int
    """Bytes peers sent over coordination streams (Offers, padding, Syncs)."""
    refused_candidates: int
    """Candidates peers named that this node may not probe or dial (`traversal.scope`)."""
    paths: PathStatistics
    """The punched connections being kept alive (`punch/keepalive.py`)."""


@dataclass(frozen=True, slots=True)
class Punched:
    """A direct connection opened through the NATs, and how."""

    peer: ID
    transport: str
    """`udp` (QUIC over the punched UDP path) or `tcp` (simultaneous open)."""
    local: Endpoint
    remote: Endpoint
    rtt: float
    """Round trip of the coordination exchange, seconds."""
    elapsed: float
    """Seconds from punch() to the direct connection."""
    probes_sent: int
    connection: INetConn

    def to_json(self) -> dict[str, object]:
        return {"peer": str(self.peer), "path": PathKind.PUNCHED, "transport": self.transport,
                "local": str(self.local), "remote": str(self.remote),
                "rtt_ms": round(self.rtt * 1e3, 3), "time_ms": round(self.elapsed * 1e3, 3),
                "probes_sent": self.probes_sent}
