"""What a mesh node sees of its peers: members, known servers, and where to reach each.

Read from the host (its connections, identify's protocols, the peerstore) each time the node
looks at the mesh; nothing here is kept. A peer's claimed addresses are only dialled to join
it; reflectors, relays and dial-back helpers are reached where they were seen
(`mesh.addresses`).
"""

from __future__ import annotations

from collections.abc import Sequence

import multiaddr

from meshnat import _libp2p
from meshnat._libp2p import ID, PeerInfo
from meshnat._libp2p.dht import MeshDHT, stored_addrs, stored_protocols
from meshnat.limits import network_of
from meshnat.mesh.addresses import Observed, observed_addrs
from meshnat.mesh.dialback import DIALBACK_PROTOCOL
from meshnat.node import MeshNode


def speaks(node: MeshNode, peer: ID, protocol: str) -> bool:
    """Did identify say `peer` speaks `protocol`?"""
    return protocol in stored_protocols(node.host, peer)


def listen_addrs(node: MeshNode, peer: ID) -> list[multiaddr.Multiaddr]:
    """What the peerstore holds for `peer` but the source addresses of connections it
    dialled (ephemeral ports nothing listens on)."""
    sources = {_libp2p.connection_remote(c) for c in
               node.host.get_network().get_connections(peer) if _libp2p.is_inbound(c)}
    return [a for a in stored_addrs(node.host, peer)
            if (p := _libp2p.endpoint_of(a)) is None or p[1] not in sources]


def seen_addrs(node: MeshNode, peer: ID) -> list[multiaddr.Multiaddr]:
    """Where `peer` is reached as a reflector, relay or dial-back helper: at the IPs its
    live direct connections come from, never at an IP it claims (`mesh.addresses`)."""
    seen = [Observed(c.transport, c.remote, not _libp2p.is_inbound(c.conn))
            for c in node.connections(peer) if c.kind.is_direct and c.remote is not None]
    return observed_addrs(stored_addrs(node.host, peer), seen)


def members(node: MeshNode) -> dict[str, str]:
    """Directly connected mesh members: peer id -> network."""
    found: dict[str, str] = {}
    for peer in node.host.get_connected_peers():
        if not speaks(node, peer, DIALBACK_PROTOCOL):
            continue
        # TCP first: QUIC dials leave from a socket of py-libp2p's choosing
        for conn in sorted(node.connections(peer), key=lambda c: c.transport != "tcp"):
            if conn.kind.is_direct and conn.remote is not None:
                found[str(peer)] = network_of(conn.remote.ip)
                break
    return found


def known(node: MeshNode, dht: MeshDHT, bootstrap: Sequence[PeerInfo]
          ) -> dict[ID, tuple[str, PeerInfo]]:
    """Bootstrap nodes and DHT server members: peer -> (network, how to dial it)."""
    found: dict[ID, tuple[str, PeerInfo]] = {}
    for peer in [*(b.peer_id for b in bootstrap), *dht.routing_peers()]:
        given = next((b.addrs for b in bootstrap if b.peer_id == peer), [])
        addrs = [a for a in [*given, *listen_addrs(node, peer)]
                 if not _libp2p.is_circuit_addr(a)]
        parsed = [p for p in map(_libp2p.endpoint_of, addrs) if p is not None]
        if parsed and peer != node.peer_id:
            found.setdefault(peer, (network_of(parsed[0][1].ip), PeerInfo(peer, addrs)))
    return found
