"""What this node may send to addresses a peer named but has not proven (pure, no I/O).

A traversal or punch sends packets to addresses the *peer* chose, so without a bound any peer
could aim this node at a third party. The rule: packets in volume go only to an IP the peer has
**proven**, an IP from which a packet carrying the traversal's unguessable txid has already
arrived, or one this node saw on a direct (non-relayed) connection from that peer. To all other
IPs of one network (an IPv4 /24 or IPv6 /56, `meshnat.limits.network_of`; an IPv4-mapped IPv6
address counts as its IPv4 address) this node sends at most `ratio` (3) times the bytes the
requester sent over the coordination stream (its Offer, any padding, Sync), counted on the wire
(UDP/IP or TCP/IP headers included), while what it received is counted without headers. The
allowance is per victim network, not per IP: an Offer naming eight hosts of one /24 gets that
/24 3x its bytes in all, not 3x per host. A requester that needs more
before its address can be proven (birthday probing) pays for it with padding, as AutoNAT v2
makes a client send 30-100 KB before a dial-back to an address other than the observed one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from meshnat.errors import ConfigError
from meshnat.limits import network_of

IP = IPv4Address | IPv6Address

AMPLIFICATION_RATIO = 3.0
"""Bytes sent to an unproven IP per byte the requester sent (the issue's bound)."""

UDP_OVERHEAD = {4: 28, 6: 48}
"""IP + UDP header bytes of a datagram, by IP version."""

TCP_DIAL_BYTES = {4: 240, 6: 320}
"""What one TCP dial may send to an IP, by IP version: four 60-byte (80 on IPv6) segments,
either a SYN and its retransmissions within a punch's 3 s (Linux resends after 1 s and 3 s),
or, where something listens, the SYN, the handshake's ACK, multistream-select's first line and
the close."""


def unmapped(ip: IP) -> IP:
    """`ip`, or the IPv4 address an IPv4-mapped IPv6 address (::ffff:a.b.c.d) reaches."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def udp_wire_bytes(payload: int, ip: IP) -> int:
    """Bytes a UDP datagram with `payload` bytes occupies on the wire to `ip`."""
    return payload + UDP_OVERHEAD[ip.version]


def tcp_dial_bytes(ip: IP) -> int:
    """Bytes one TCP dial (its SYN and retransmissions) may send to `ip`."""
    return TCP_DIAL_BYTES[ip.version]


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    paid: int
    """Bytes the requester sent over the coordination stream."""
    proven: int
    """IPs proven so far."""
    unproven_bytes: int
    """Bytes sent to IPs while they were unproven (all IPs together)."""
    max_unproven_bytes: int
    """The most sent to any one unproven network: never above `ratio * paid`."""
    withheld: int
    """Packets (or dials) not sent because an unproven IP's allowance was spent."""


class SendBudget:
    """Allowance of one traversal or punch: unlimited to proven IPs, `ratio * paid` bytes to
    the unproven IPs of each network together. Shared by every path of a punch (UDP probes,
    birthday probes, TCP dials), since one Offer pays for all of them."""

    def __init__(self, *, paid: int, proven: Iterable[IP] = (),
                 ratio: float = AMPLIFICATION_RATIO) -> None:
        if paid < 0 or not 0 < ratio <= 100:
            raise ConfigError(f"bad send budget: paid={paid} ratio={ratio}")
        self.paid, self.ratio = paid, ratio
        self._proven: set[IP] = {unmapped(ip) for ip in proven}
        self._sent: Counter[str] = Counter()  # by network of the unproven destination
        self.withheld = 0

    def pay(self, nbytes: int) -> None:
        """The requester sent `nbytes` more over the coordination stream."""
        self.paid += max(0, nbytes)

    def prove(self, ip: IP) -> bool:
        """A packet carrying the txid arrived from `ip`; returns whether it was news."""
        ip = unmapped(ip)
        if ip in self._proven:
            return False
        self._proven.add(ip)
        return True

    def is_proven(self, ip: IP) -> bool:
        return unmapped(ip) in self._proven

    def allowance(self, ip: IP) -> int | None:
        """Bytes still allowed to `ip` (None: proven, no bound from here), shared with every
        other unproven IP of its network."""
        ip = unmapped(ip)
        if ip in self._proven:
            return None
        return max(0, int(self.ratio * self.paid) - self._sent[network_of(ip)])

    def spend(self, ip: IP, nbytes: int) -> bool:
        """Account for `nbytes` about to go to `ip`; False (and nothing sent) if unproven and
        over its network's allowance."""
        allowance = self.allowance(ip)
        if allowance is None:
            return True
        if nbytes > allowance:
            self.withheld += 1
            return False
        self._sent[network_of(unmapped(ip))] += nbytes
        return True

    def sent_unproven(self, ip: IP) -> int:
        """Bytes sent to unproven IPs of `ip`'s network."""
        return self._sent[network_of(unmapped(ip))]

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(self.paid, len(self._proven), sum(self._sent.values()),
                                max(self._sent.values(), default=0), self.withheld)
