"""How a punch goes, decided from the two Offers alone (pure, no I/O): `plan_punch`.

Once both Offers are known each side computes the same strategy from them (the initiator's and
the responder's plans mirror each other), much as Tailscale's netcheck computes a probe plan
before it sends a packet:

- per family: the Offers carry a mapping hint for IPv4 (`mapping`) and one for IPv6
  (`mapping6`), and each family's UDP path is planned from its own two hints. IPv6 counts when
  both Offers carry global IPv6 candidates (`has_ipv6`: not link-local, unique local or
  IPv4-mapped); every other candidate (IPv4, and LAN IPv6) is the IPv4 family's;
- a family's UDP path: neither side endpoint-dependent (RFC 4787 §4.1) means a traversal on
  the shared QUIC port (every pair of the families that traverse probed at once, the first live
  one taken; the initiator dials); exactly one endpoint-dependent means birthday probing on
  IPv4 (the hard side opens many sockets and dials QUIC from the one that heard; the easy side
  sprays random ports and waits) and no IPv6 path (birthday probing is IPv4's cure here); both
  endpoint-dependent means no path in that family;
- the families run side by side: birthday probing on IPv4 runs beside an IPv6 traversal (an
  NPTv6, NAT66 or a broken IPv6 path must not leave a hard IPv4 pair on the relay), and the
  first direct connection wins;
- give up at once, before anything is paid or sent, when no family has a path: both IPv4 sides
  endpoint-dependent (birthday probing would need ~170,000 probes per side) and no IPv6 path
  (UDP, or TCP on both sides with not both IPv6 sides endpoint-dependent); or when the peer
  offered no candidate at all;
- TCP, when the peer has TCP candidates: a public side (its listener reachable as it is) waits
  to be dialled, the other side dials it (the initiator, when both are public); two NATed sides
  open at once from their listen ports, the initiator as Noise initiator;
- padding: only birthday probing needs it (`punch/payment.py`), from the IPv4 hints; nothing
  when giving up;
- timing: DCUtR's, the responder punches on Sync and the initiator RTT/2 after it;
- TCP after UDP: when both sides' UDP mappings are endpoint-independent in a family the
  traversal probes (their discovery rounds over UDP agreed; IPv6 behind two stateful
  firewalls counts) the traversal is all but certain to work, so the TCP open waits
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
    """Birthday probing (IPv4) when it runs, else a traversal when one runs, else None (no
    UDP path: the peer offered no UDP candidate, or no family has one)."""
    udp_dials: bool
    """This side dials QUIC over the `udp` path; otherwise it waits for the peer's
    connection."""
    traversal_versions: frozenset[int]
    """The families the UDP traversal probes (4: IPv4 and LAN IPv6 candidates, 6: global
    IPv6 ones); empty when none does. Beside birthday probing: {6} or empty."""
    traversal_dials: bool
    """This side takes a traversal pair and dials QUIC over it (the initiator)."""
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
    udp4 = _udp_path(ours.mapping, theirs.mapping) \
        if any(not _global6(e) for e in theirs.udp) else None
    udp6 = _udp_path(ours.mapping6, theirs.mapping6) \
        if has_ipv6(ours.udp) and has_ipv6(theirs.udp) else None
    versions = frozenset(v for v, path in ((4, udp4), (6, udp6)) if path is UdpPath.TRAVERSAL)
    udp = udp4 if udp4 in _BIRTHDAY else UdpPath.TRAVERSAL if versions else None
    tcp = _tcp_path(ours.public, theirs.public, initiator) \
        if theirs.tcp and _tcp_may_work(ours, theirs) else None
    give_up = _give_up(ours, theirs, udp, tcp)
    if give_up:
        udp, tcp, versions = None, None, frozenset()
    return PunchPlan(
        give_up=give_up,
        # the peer probes our IPv4 side (birthday) only if we offered one: pay only then
        padding=0 if give_up or all(_global6(e) for e in ours.udp) else padding_owed(
            ours.mapping, theirs.mapping, max_probes=config.birthday_max_probes,
            sockets=config.birthday_sockets),
        udp=udp,
        udp_dials=udp is UdpPath.BIRTHDAY_HARD or (udp is UdpPath.TRAVERSAL and initiator),
        traversal_versions=versions,
        traversal_dials=initiator and bool(versions),
        birthday=_birthday(udp, config),
        tcp=tcp,
        half_rtt_delay=initiator,
        tcp_after_udp=tcp is not None and udp is UdpPath.TRAVERSAL and any(
            v in versions and a is b is MappingHint.ENDPOINT_INDEPENDENT
            for v, a, b in ((4, ours.mapping, theirs.mapping),
                            (6, ours.mapping6, theirs.mapping6))),
        path_timeout=config.punch_timeout,
        backstop=config.punch_timeout + BACKSTOP,
    )


def traversal_candidates(endpoints: Iterable[Endpoint],
                         versions: frozenset[int]) -> tuple[Endpoint, ...]:
    """The candidates of the families a traversal probes (`PunchPlan.traversal_versions`):
    global IPv6 ones for 6, every other one (IPv4, LAN IPv6) for 4; order kept."""
    return tuple(e for e in endpoints if (6 if _global6(e) else 4) in versions)


_BIRTHDAY = (UdpPath.BIRTHDAY_HARD, UdpPath.BIRTHDAY_EASY)
_UNIQUE_LOCAL = IPv6Network("fc00::/7")


def has_ipv6(endpoints: Iterable[Endpoint]) -> bool:
    """Whether any of `endpoints` is an IPv6 address that may reach another site: not
    IPv4-mapped, link-local or unique local (fc00::/7, RFC 4193: a LAN's, never routed
    between sites; the IPv4 LAN candidates cover the LAN)."""
    return any(_global6(e) for e in endpoints)


def _global6(e: Endpoint) -> bool:
    return (isinstance(e.ip, IPv6Address) and e.ip.ipv4_mapped is None
            and not e.ip.is_link_local and e.ip not in _UNIQUE_LOCAL)


def network_rtt(measured: float, turnaround_us: int) -> float:
    """The coordination round trip less the peer's processing: `measured` from the Offer's
    write to the first frame back, `turnaround_us` what the responder's Offer says it spent
    between the stream's arrival and its first write (`Offer.turnaround`), clamped to
    [0, measured] so a lying peer moves only its own punch, by at most half its RTT."""
    return measured - min(max(turnaround_us / 1e6, 0.0), measured)


def punch_wait(measured: float, turnaround_us: int) -> float:
    """Seconds the initiator waits after Sync before punching: DCUtR's RTT/2, of the
    network's round trip (`network_rtt`), so that it starts as the responder, which punches
    on Sync's arrival, does."""
    return network_rtt(measured, turnaround_us) / 2


def tcp_grace(rtt: float) -> float:
    """Seconds the TCP path waits for the UDP path to hear the peer (`tcp_after_udp`): two
    coordination round trips (one direct round trip of probes is expected within one, the
    other is slack for the two sides' start), within [TCP_GRACE_MIN, TCP_GRACE_MAX]."""
    return min(max(2 * rtt, TCP_GRACE_MIN), TCP_GRACE_MAX)


def _tcp_may_work(ours: Offer, theirs: Offer) -> bool:
    """Not both IPv4 sides endpoint-dependent, or an IPv6 TCP path (not both IPv6 sides
    endpoint-dependent) on both."""
    hard = MappingHint.ENDPOINT_DEPENDENT
    if not (ours.mapping is hard and theirs.mapping is hard):
        return True
    return not (ours.mapping6 is hard and theirs.mapping6 is hard) \
        and has_ipv6(ours.tcp) and has_ipv6(theirs.tcp)


def _give_up(ours: Offer, theirs: Offer, udp: UdpPath | None,
             tcp: TcpPath | None) -> str | None:
    if not theirs.udp and not theirs.tcp:
        return "the peer offered no candidate address"
    if udp is not None or tcp is not None:
        return None
    hard = MappingHint.ENDPOINT_DEPENDENT
    if ours.mapping is hard and theirs.mapping is hard:
        return "both sides have endpoint-dependent mapping (and no IPv6 path): stay on " \
            "the relay"
    return "no UDP or TCP path in either IP family: stay on the relay"


def _udp_path(ours: MappingHint, theirs: MappingHint) -> UdpPath | None:
    """One family's UDP path from its two hints (for IPv6 a birthday path means none)."""
    hard, easy = MappingHint.ENDPOINT_DEPENDENT, MappingHint.ENDPOINT_INDEPENDENT
    if ours is hard and theirs is hard:
        return None
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
