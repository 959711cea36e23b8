"""How a punch goes, decided from the two Offers alone (pure, no I/O): `plan_punch`.

Once both Offers are known each side computes the same strategy from them (the initiator's and
the responder's plans mirror each other), much as Tailscale's netcheck computes a probe plan
before it sends a packet:

- IPv6 (dual stack): the mapping hints describe IPv4 NATs; IPv6 candidates (`has_ipv6`:
  neither link-local nor unique local) are taken as not translated (a global address behind a
  stateful firewall, the common case: no NAT66). When both Offers carry IPv6 candidates of a
  transport, that transport is punched by a simultaneous open whatever the IPv4 NATs are: UDP
  as a traversal (every pair of both families probed at once, the first live one taken), TCP
  from the listen ports;
- both sides endpoint-dependent (RFC 4787 §4.1) and no IPv6 on both: give up at once, before
  anything is paid or sent (birthday probing would need ~170,000 probes per side);
- a peer that offered no candidate at all: give up;
- UDP, when the peer has UDP candidates: both with IPv6 means a traversal (above); else exactly
  one side endpoint-dependent means birthday probing (the hard side opens many sockets and
  dials QUIC from the one that heard; the easy side sprays random ports and waits); otherwise a
  traversal on the shared QUIC port, where the initiator takes the first live pair and dials;
- TCP, when the peer has TCP candidates: a public side (its listener reachable as it is) waits
  to be dialled, the other side dials it (the initiator, when both are public); two NATed sides
  open at once from their listen ports, the initiator as Noise initiator;
- padding: only birthday probing needs it (`punch/payment.py`); nothing when giving up or
  when IPv6 makes a traversal of it;
- timing: DCUtR's, the responder punches on Sync and the initiator RTT/2 after it;
- TCP after UDP: when both sides' UDP mappings are endpoint-independent (their discovery
  rounds over UDP agreed) the traversal is all but certain to work, so the TCP open waits
  (`tcp_after_udp`): it starts only if the UDP path heard nothing within `tcp_grace(rtt)` or
  failed, and is skipped once UDP connected. Both sides decide this from the same two Offers,
  so their simultaneous opens still start together. Otherwise (UDP blocked or unknown,
  birthday probing) both paths start at once, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv6Address, IPv6Network

from meshnat.endpoint import Endpoint
from meshnat.punch.config import PunchConfig
from meshnat.punch.messages import MappingHint, Offer
from meshnat.punch.payment import padding_owed

BIRTHDAY_TICK = 0.01
"""Seconds between the easy side's bursts of birthday probes."""

BIRTHDAY_REFRESH = 1.0
"""Seconds between the hard side's rounds of probes (one per socket)."""

TCP_GRACE_MIN = 0.05
"""Seconds the TCP open waits at least for the UDP path to hear the peer (`tcp_grace`)."""

TCP_GRACE_MAX = 0.5
"""Seconds it waits at most, however slow the coordination was."""

BACKSTOP = 1.0
"""Seconds a path may overrun `punch_timeout` before it is cancelled (its driver's own
deadline should have ended it)."""


class Role(StrEnum):
    INITIATOR = "initiator"
    """Sends the first Offer and Sync; takes the UDP pair; Noise initiator on TCP."""
    RESPONDER = "responder"


class UdpPath(StrEnum):
    TRAVERSAL = "traversal"
    """Both sides probe each other's candidates from their QUIC ports (`TraversalService`)."""
    BIRTHDAY_HARD = "birthday-hard"
    """This side is endpoint-dependent: many sockets, each probing the easy side once."""
    BIRTHDAY_EASY = "birthday-easy"
    """The peer is endpoint-dependent: this side probes random ports of its IP."""


class TcpPath(StrEnum):
    ACCEPT = "accept"
    """This side is public: the peer dials its listener; it only waits."""
    DIAL = "dial"
    """Dial from the TCP listen port as Noise initiator (a simultaneous open when the peer
    dials too)."""
    DIAL_AS_RESPONDER = "dial-as-responder"
    """Simultaneous open from the TCP listen port, as Noise responder."""


@dataclass(frozen=True, slots=True)
class Birthday:
    """One side's birthday probing, before the peer's payment caps it (`probes_allowed`)."""

    wanted: int
    """Hard side: sockets to open; easy side: probes to send at most."""
    per_tick: int
    """Probes sent each `interval`: hard side one per socket, easy side a burst."""
    interval: float
    """Seconds between the hard side's rounds or the easy side's bursts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PunchPlan:
    """What one side does in a punch. `give_up` set: nothing at all, no path and no padding
    (it is the reason, for `PunchFailed`)."""

    give_up: str | None
    padding: int
    """Bytes of `Padding` this side sends before its Offer (responder) or Sync (initiator)."""
    udp: UdpPath | None
    """None: no UDP path (the peer offered no UDP candidate)."""
    udp_dials: bool
    """This side dials QUIC over the UDP path; otherwise it waits for the peer's connection."""
    birthday: Birthday | None
    """Set for the two birthday paths."""
    tcp: TcpPath | None
    """None: no TCP path (the peer offered no TCP candidate)."""
    half_rtt_delay: bool
    """Wait RTT/2 after Sync before punching (DCUtR: the initiator)."""
    tcp_after_udp: bool
    """The TCP path starts only once the UDP path heard nothing within `tcp_grace(rtt)`, or
    failed; it is not tried when UDP connected (at zero delay two handshakes at once cost a
    punch more CPU time than the second path can win it)."""
    path_timeout: float
    """Seconds each path may take after Sync."""
    backstop: float
    """Seconds after which a path still running is cancelled."""


def plan_punch(ours: Offer, theirs: Offer, role: Role, config: PunchConfig) -> PunchPlan:
    """The plan for this side of a punch: `ours` is the Offer it sent, `theirs` the peer's."""
    initiator = role is Role.INITIATOR
    give_up = _give_up(ours, theirs)
    v6 = has_ipv6(ours.udp) and has_ipv6(theirs.udp)
    udp = (UdpPath.TRAVERSAL if v6 else _udp_path(ours.mapping, theirs.mapping)) \
        if theirs.udp and not give_up else None
    tcp = _tcp_path(ours.public, theirs.public, initiator) if theirs.tcp and not give_up else None
    return PunchPlan(
        give_up=give_up,
        padding=0 if give_up or v6 else padding_owed(ours.mapping, theirs.mapping,
                                                     max_probes=config.birthday_max_probes,
                                                     sockets=config.birthday_sockets),
        udp=udp,
        udp_dials=udp is UdpPath.BIRTHDAY_HARD or (udp is UdpPath.TRAVERSAL and initiator),
        birthday=_birthday(udp, config),
        tcp=tcp,
        half_rtt_delay=initiator,
        tcp_after_udp=(tcp is not None and udp is UdpPath.TRAVERSAL
                       and ours.mapping is theirs.mapping is MappingHint.ENDPOINT_INDEPENDENT),
        path_timeout=config.punch_timeout,
        backstop=config.punch_timeout + BACKSTOP,
    )


_UNIQUE_LOCAL = IPv6Network("fc00::/7")


def has_ipv6(endpoints: Iterable[Endpoint]) -> bool:
    """Whether any of `endpoints` is an IPv6 address that may reach another site: not
    IPv4-mapped, link-local or unique local (fc00::/7, RFC 4193: a LAN's, never routed
    between sites; the IPv4 LAN candidates cover the LAN)."""
    return any(isinstance(e.ip, IPv6Address) and e.ip.ipv4_mapped is None
               and not e.ip.is_link_local and e.ip not in _UNIQUE_LOCAL for e in endpoints)


def tcp_grace(rtt: float) -> float:
    """Seconds the TCP path waits for the UDP path to hear the peer (`tcp_after_udp`): two
    coordination round trips (one direct round trip of probes is expected within one, the
    other is slack for the two sides' start), within [TCP_GRACE_MIN, TCP_GRACE_MAX]."""
    return min(max(2 * rtt, TCP_GRACE_MIN), TCP_GRACE_MAX)


def _give_up(ours: Offer, theirs: Offer) -> str | None:
    hard = MappingHint.ENDPOINT_DEPENDENT
    v6 = any(has_ipv6(a) and has_ipv6(b) for a, b in ((ours.udp, theirs.udp),
                                                       (ours.tcp, theirs.tcp)))
    if ours.mapping is hard and theirs.mapping is hard and not v6:
        return "both sides have endpoint-dependent mapping (and no IPv6 on both): stay on " \
            "the relay"
    if not theirs.udp and not theirs.tcp:
        return "the peer offered no candidate address"
    return None


def _udp_path(ours: MappingHint, theirs: MappingHint) -> UdpPath:
    hard, easy = MappingHint.ENDPOINT_DEPENDENT, MappingHint.ENDPOINT_INDEPENDENT
    if ours is hard and theirs is easy:
        return UdpPath.BIRTHDAY_HARD
    if ours is easy and theirs is hard:
        return UdpPath.BIRTHDAY_EASY
    return UdpPath.TRAVERSAL


def _birthday(udp: UdpPath | None, config: PunchConfig) -> Birthday | None:
    if udp is UdpPath.BIRTHDAY_HARD:
        return Birthday(config.birthday_sockets, config.birthday_sockets, BIRTHDAY_REFRESH)
    if udp is UdpPath.BIRTHDAY_EASY:
        return Birthday(config.birthday_max_probes, config.birthday_probes_per_tick,
                        BIRTHDAY_TICK)
    return None


def _tcp_path(ours_public: bool, theirs_public: bool, initiator: bool) -> TcpPath:
    if ours_public and (not theirs_public or not initiator):
        return TcpPath.ACCEPT  # they dial us (the initiator dials when both are public)
    if theirs_public or initiator:
        return TcpPath.DIAL
    return TcpPath.DIAL_AS_RESPONDER
