"""Where a connected peer can be reached: at the IP its live connections come from (pure).

A peer's identify listen addresses are its own claim: behind a NAT they are LAN addresses
(10.0.0.5:4001) that nobody outside can dial, and a public node that asked such a peer for
reflection got nothing back. A mesh node therefore reaches a reflector, relay or dial-back
helper only at what it has observed: the remote end of each connection it dialled (the peer
listens there), and each port the peer claims at each IP its direct connections come from.
A claimed IP is never used: a peer can only point this node at the address it talks from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr

from meshnat._libp2p import endpoint_of
from meshnat.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class Observed:
    """One live direct connection to the peer, as the transport saw it."""

    transport: str
    """`tcp`, or `udp` for QUIC."""
    remote: Endpoint
    dialled: bool
    """This node dialled it: `remote` is an address the peer listens on."""


def _addr(transport: str, endpoint: Endpoint) -> multiaddr.Multiaddr:
    proto = f"ip{endpoint.ip.version}"
    tail = "tcp" if transport == "tcp" else "udp"
    suffix = "" if transport == "tcp" else "/quic-v1"
    return multiaddr.Multiaddr(f"/{proto}/{endpoint.ip}/{tail}/{endpoint.port}{suffix}")


def observed_addrs(claimed: Sequence[multiaddr.Multiaddr],
                   observed: Sequence[Observed]) -> list[multiaddr.Multiaddr]:
    """Addresses to reach the peer at: the remote ends of the connections this node dialled,
    then each claimed TCP or QUIC port at each observed IP of its family; [] when no
    direct connection is observed. At most one address per (transport, endpoint)."""
    found: dict[tuple[str, Endpoint], multiaddr.Multiaddr] = {}
    for seen in observed:
        if seen.dialled:
            found.setdefault((seen.transport, seen.remote), _addr(seen.transport, seen.remote))
    ips = list(dict.fromkeys(seen.remote.ip for seen in observed))
    for addr in claimed:
        parsed = endpoint_of(addr)
        if parsed is None or (parsed[0] == "udp" and "/quic-v1" not in str(addr)):
            continue
        transport, endpoint = parsed
        for ip in ips:
            if ip.version == endpoint.ip.version:
                at = Endpoint(ip, endpoint.port)
                found.setdefault((transport, at), _addr(transport, at))
    return list(found.values())
