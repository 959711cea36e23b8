"""Where a request comes from, for limits per source network; which IPs of a peer are
proven by a direct connection; and which endpoints this node offers as its candidates."""

from __future__ import annotations

from collections.abc import Iterator

from meshnat import _libp2p
from meshnat._libp2p import ID, INetStream
from meshnat.discovery import PeerAddressDiscovery
from meshnat.endpoint import Endpoint
from meshnat.errors import MeshNatError
from meshnat.limits import RELAYED, network_of
from meshnat.node import MeshNode
from meshnat.traversal.budget import IP


def source_network(stream: INetStream) -> str:
    """The source network a request on `stream` counts for: the IPv4 /24 or IPv6 /56 of the
    peer's address on a direct connection; over a relay (the peer's own address is unknown
    there) the relay's network, prefixed `relayed via`, so requests through one relay share
    one fair share and peers behind other relays keep theirs (the relay bounds circuits per
    source network in turn)."""
    try:
        addr = stream.get_remote_address()
        remote = Endpoint.from_sockaddr(addr) if addr else None
    except (MeshNatError, ValueError, OSError, AttributeError):
        remote = None
    if _libp2p.is_relayed(stream):
        return RELAYED if remote is None else f"relayed via {network_of(remote.ip)}"
    return RELAYED if remote is None else network_of(remote.ip)


def direct_ips(node: MeshNode, peer: ID) -> Iterator[IP]:
    """IPs this node sees `peer` at on direct (non-relayed) connections: proven by the
    connection's handshake, so probes may go there in volume."""
    for conn in node.connections(peer):
        if (remote := conn.remote) is not None:  # None through a relay
            yield remote.ip


def peer_ips(node: MeshNode, peer: ID) -> Iterator[IP]:
    """IPs of every connection to `peer`: its own on direct ones, the relay's over a relay
    (what scope the peer connects from, `traversal.scope`)."""
    for conn in node.host.get_network().get_connections(peer):
        try:
            remote = _libp2p.connection_remote(conn)
        except (MeshNatError, ValueError, OSError, AttributeError):
            remote = None
        if remote is not None:
            yield remote.ip


def own_endpoints(node: MeshNode) -> list[Endpoint]:
    """This node's listen endpoints, UDP and TCP: never a peer's candidate."""
    return [*node.local_endpoints("udp"), *node.local_endpoints("tcp")]


def offer_candidates(node: MeshNode, discovery: PeerAddressDiscovery | None, port: int, *,
                     shared: bool) -> tuple[Endpoint, ...]:
    """The candidates to offer for a traversal on local UDP `port`, best first: on the shared
    port, the public endpoint discovery confirmed for it (IPv4, then IPv6); then the public IP
    discovery saw with our port (NATs that keep ports map it there); then the node's own
    addresses."""
    candidates = [Endpoint(e.ip, port) for e in node.local_endpoints("udp")]
    seen = discovery.last_round("udp") if discovery else None
    if seen is not None and seen.ip is not None:
        candidates.insert(0, Endpoint(seen.ip, port))
    if shared and seen is not None and seen.address is not None:
        candidates.insert(0, seen.address)
    seen6 = discovery.latest("udp", 6) if discovery else None
    if shared and seen6 is not None and seen6.address is not None:
        candidates.insert(1, seen6.address)  # the IPv6 mapping discovery confirmed
    return tuple(dict.fromkeys(candidates))
