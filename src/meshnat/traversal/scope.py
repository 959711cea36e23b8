"""Which candidates a peer may name (pure, no I/O).

A traversal or punch probes and dials the addresses the peer lists, so a remote peer could
otherwise aim this node at its own local services (loopback), its link (link-local), a LAN
multicast group or broadcast, or its own listeners. `admit_candidates` refuses those:

- never: an unspecified address (0.0.0.0/8, ::), multicast (224.0.0.0/4, ff00::/8), the IPv4
  limited broadcast 255.255.255.255, the reserved 240.0.0.0/4, or one of this node's own
  listen endpoints (ip and port);
- loopback (127.0.0.0/8, ::1) only from a peer whose own connection comes from loopback, and
  link-local (169.254.0.0/16, fe80::/10) only from a peer connected from link-local;
- everything else, private ranges included (10/8, 172.16/12, 192.168/16, 100.64/10: LANs and
  the NAT lab use them), is a candidate, bounded by the send budget.

An IPv4-mapped IPv6 candidate (::ffff:a.b.c.d) is judged, and kept, as its IPv4 address.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from meshnat.endpoint import Endpoint
from meshnat.traversal.budget import IP, unmapped

LOCAL = "local"
"""Scope of a loopback address."""
LINK = "link"
"""Scope of a link-local address."""
ANY = "any"
"""Scope of every other usable address."""

_RESERVED_V4 = IPv4Network("240.0.0.0/4")


def scope_of(ip: IP) -> str | None:
    """`local`, `link` or `any`; None for an address no peer can be reached at."""
    ip = unmapped(ip)
    if ip.is_unspecified or ip.is_multicast:
        return None
    if isinstance(ip, IPv4Address) and (ip.packed[0] == 0 or ip in _RESERVED_V4):
        return None  # 0/8, 240/4 (255.255.255.255 included)
    if ip.is_loopback:
        return LOCAL
    if ip.is_link_local:
        return LINK
    return ANY


def peer_scopes(peer_ips: Iterable[IP]) -> frozenset[str]:
    """Scopes a peer connects from (over a relay: the relay's address)."""
    return frozenset(s for s in map(scope_of, peer_ips) if s is not None)


def admit_candidates(candidates: Iterable[Endpoint], scopes: frozenset[str],
                     own: Iterable[Endpoint] = ()) -> tuple[tuple[Endpoint, ...], int]:
    """The candidates this node may probe or dial, IPv4-mapped ones unwrapped, duplicates
    dropped, and how many were refused. `scopes`: `peer_scopes` of the peer's connections;
    `own`: this node's listen endpoints."""
    mine = {(unmapped(e.ip), e.port) for e in own}
    kept: dict[Endpoint, None] = {}
    refused = 0
    for candidate in candidates:
        ip = unmapped(candidate.ip)
        scope = scope_of(ip)
        if scope is None or (scope != ANY and scope not in scopes) or (ip, candidate.port) in mine:
            refused += 1
            continue
        kept.setdefault(Endpoint(ip, candidate.port) if ip != candidate.ip else candidate)
    return tuple(kept), refused
