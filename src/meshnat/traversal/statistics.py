"""What a `TraversalService` has done and refused since it was mounted."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TraversalStatistics:
    open: int
    """Traversals open now (both directions)."""
    started_by_peers: int
    """Traversals peers started here since mounting."""
    refused: dict[str, int]
    """Traversals peers asked for and were refused, by the bound that refused them:
    `peer-rate`, `network-rate`, `total-rate`, `peer`, `network`, `total`."""
    unproven_bytes: int
    """Bytes (UDP/IP headers included) sent to candidate IPs not proven at the time."""
    withheld: int
    """Probes not sent because an unproven network's allowance (3x the peer's bytes) was
    spent."""
    refused_candidates: int = 0
    """Candidates peers named that this node may not probe (`traversal.scope`: loopback or
    link-local from a peer not connected from there, multicast, unspecified, broadcast, this
    node's own listen endpoints)."""
