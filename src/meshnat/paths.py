"""What path a connection to a peer takes (`PathKind`), and which connection is the best.

`MeshNode.connections(peer)` is the one place that labels connections and orders them; this
module holds the labels and the rule, so that they can be read without py-libp2p (pure).
"""

from __future__ import annotations

from enum import StrEnum


class PathKind(StrEnum):
    """How a connection reaches its peer. The values are the labels `--json` output prints."""

    DIRECT = "direct"
    """Dialled to (or accepted from) the peer's own address."""
    PUNCHED = "punched"
    """Direct, opened through the NATs by a hole punch."""
    MAPPED = "mapped"
    """Direct, dialled to a port the peer's router maps for it (PCP, NAT-PMP, UPnP-IGD), as
    its signed record says; only `Connector.connect` labels a path so."""
    RELAYED = "relayed"
    """A circuit through a relay."""

    @property
    def is_direct(self) -> bool:
        """True for a path without a relay in it (direct, mapped or punched)."""
        return self is not PathKind.RELAYED


def best_first_key(kind: PathKind, *, doubtful: bool = False) -> int:
    """The sort key of the best-connection rule: a direct or punched connection before a
    relayed one, and a relayed one before a punched one that is `doubtful` (its health check
    is probing it after a suspected failure and has not confirmed it since); among equals the
    order stays the swarm's (oldest first), since a sort on this key is stable. A relayed
    connection may be draining after a punch, so new streams take the direct one; a doubtful
    punched one may be dead (a flushed NAT binding), so new streams take the relay while
    there is one."""
    if not kind.is_direct:
        return 1
    return 2 if doubtful else 0
