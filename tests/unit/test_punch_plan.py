"""`plan_punch` as a table: one row per NAT kind of this side, of the peer, and role."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from meshnat.endpoint import Endpoint
from meshnat.punch.config import PunchConfig
from meshnat.punch.messages import MappingHint, Offer
from meshnat.punch.plan import (
    TCP_GRACE_MAX,
    TCP_GRACE_MIN,
    Birthday,
    PunchPlan,
    Role,
    TcpPath,
    UdpPath,
    plan_punch,
    tcp_grace,
)

TXID = bytes(range(16))
UDP, TCP = (Endpoint.parse("198.18.0.20:4001"),), (Endpoint.parse("198.18.0.20:4001"),)
EI, ED, UNKNOWN = (MappingHint.ENDPOINT_INDEPENDENT, MappingHint.ENDPOINT_DEPENDENT,
                   MappingHint.UNKNOWN)
KINDS = {
    "public": Offer(TXID, UDP, TCP, EI, public=True),
    "cone": Offer(TXID, UDP, TCP, EI),
    "symmetric": Offer(TXID, UDP, TCP, ED),
    "unknown": Offer(TXID, UDP, TCP, UNKNOWN),
    "cone-no-udp": Offer(TXID, (), TCP, EI),  # no QUIC listener, or every UDP candidate refused
    "cone-no-tcp": Offer(TXID, UDP, (), EI),
    "nothing": Offer(TXID, (), (), EI),
}
INIT, RESP = Role.INITIATOR, Role.RESPONDER
TRAV, HARD, EASY = UdpPath.TRAVERSAL, UdpPath.BIRTHDAY_HARD, UdpPath.BIRTHDAY_EASY
DIAL, DAR, ACCEPT = TcpPath.DIAL, TcpPath.DIAL_AS_RESPONDER, TcpPath.ACCEPT
H, E = 39_595, 9_899  # padding: a third of 2048 probes / of 2 x 256 probes, 58 bytes each
GIVE_UP = "give up"

# ours, theirs, role: UDP path, this side dials QUIC, TCP path, padding
TABLE = [
    ("public", "public", INIT, TRAV, True, DIAL, 0),
    ("public", "public", RESP, TRAV, False, ACCEPT, 0),
    ("public", "cone", INIT, TRAV, True, ACCEPT, 0),
    ("public", "cone", RESP, TRAV, False, ACCEPT, 0),
    ("public", "symmetric", INIT, EASY, False, ACCEPT, E),
    ("public", "symmetric", RESP, EASY, False, ACCEPT, E),
    ("public", "unknown", INIT, TRAV, True, ACCEPT, 0),
    ("public", "unknown", RESP, TRAV, False, ACCEPT, 0),
    ("cone", "public", INIT, TRAV, True, DIAL, 0),
    ("cone", "public", RESP, TRAV, False, DIAL, 0),
    ("cone", "cone", INIT, TRAV, True, DIAL, 0),
    ("cone", "cone", RESP, TRAV, False, DAR, 0),
    ("cone", "symmetric", INIT, EASY, False, DIAL, E),
    ("cone", "symmetric", RESP, EASY, False, DAR, E),
    ("cone", "unknown", INIT, TRAV, True, DIAL, 0),
    ("cone", "unknown", RESP, TRAV, False, DAR, 0),
    ("symmetric", "public", INIT, HARD, True, DIAL, H),
    ("symmetric", "public", RESP, HARD, True, DIAL, H),
    ("symmetric", "cone", INIT, HARD, True, DIAL, H),
    ("symmetric", "cone", RESP, HARD, True, DAR, H),
    ("symmetric", "unknown", INIT, TRAV, True, DIAL, 0),
    ("symmetric", "unknown", RESP, TRAV, False, DAR, 0),
    ("unknown", "public", INIT, TRAV, True, DIAL, 0),
    ("unknown", "public", RESP, TRAV, False, DIAL, 0),
    ("unknown", "cone", INIT, TRAV, True, DIAL, 0),
    ("unknown", "cone", RESP, TRAV, False, DAR, 0),
    ("unknown", "symmetric", INIT, TRAV, True, DIAL, 0),
    ("unknown", "symmetric", RESP, TRAV, False, DAR, 0),
    ("unknown", "unknown", INIT, TRAV, True, DIAL, 0),
    ("unknown", "unknown", RESP, TRAV, False, DAR, 0),
    # the peer has no UDP path: none here; the padding still pays for its probes to us
    ("cone", "cone-no-udp", INIT, None, False, DIAL, 0),
    ("symmetric", "cone-no-udp", RESP, None, False, DAR, H),
    ("cone-no-tcp", "cone", INIT, TRAV, True, DIAL, 0),
    ("cone", "cone-no-tcp", RESP, TRAV, False, None, 0),
]
GIVING_UP = [
    ("symmetric", "symmetric", INIT, "both sides have endpoint-dependent mapping"),
    ("symmetric", "symmetric", RESP, "both sides have endpoint-dependent mapping"),
    ("cone", "nothing", INIT, "the peer offered no candidate address"),
    ("symmetric", "nothing", RESP, "the peer offered no candidate address"),  # and pays nothing
]


def plan(ours: str, theirs: str, role: Role, config: PunchConfig | None = None) -> PunchPlan:
    return plan_punch(KINDS[ours], KINDS[theirs], role, config or PunchConfig())


@pytest.mark.parametrize(("ours", "theirs", "role", "udp", "dials", "tcp", "padding"), TABLE)
def test_the_plan_for_each_pair_of_nat_kinds_and_role(
        ours: str, theirs: str, role: Role, udp: UdpPath | None, dials: bool,
        tcp: TcpPath | None, padding: int) -> None:
    p = plan(ours, theirs, role)
    assert (p.give_up, p.udp, p.udp_dials, p.tcp, p.padding) == (None, udp, dials, tcp, padding)
    assert p.half_rtt_delay is (role is INIT)  # DCUtR: only the initiator waits RTT/2
    assert (p.path_timeout, p.backstop) == (3.0, 4.0)
    assert p.birthday == {HARD: Birthday(256, 256, 1.0),
                          EASY: Birthday(2048, 20, 0.01)}.get(udp)  # type: ignore[call-overload]


@pytest.mark.parametrize(("ours", "theirs", "role", "reason"), GIVING_UP)
def test_a_plan_that_gives_up_sends_and_pays_nothing(ours: str, theirs: str, role: Role,
                                                     reason: str) -> None:
    p = plan(ours, theirs, role)
    assert p.give_up is not None and p.give_up.startswith(reason)
    assert (p.udp, p.udp_dials, p.birthday, p.tcp, p.padding) == (None, False, None, None, 0)


def test_birthday_numbers_and_timeouts_come_from_the_config() -> None:
    config = replace(PunchConfig(), birthday_sockets=64, birthday_max_probes=300,
                     birthday_probes_per_tick=5, punch_timeout=1.5)
    hard, easy = plan("symmetric", "cone", INIT, config), plan("cone", "symmetric", RESP, config)
    assert hard.birthday == Birthday(64, 64, 1.0) and easy.birthday == Birthday(300, 5, 0.01)
    assert (hard.padding, easy.padding) == (5_800, 2_475)  # 300 x 58 / 3; 64 x 2 x 58 / 3
    assert (hard.path_timeout, hard.backstop) == (1.5, 2.5)


@pytest.mark.parametrize(("a", "b"), list(itertools.product(
    ["public", "cone", "symmetric", "unknown"], repeat=2)))
def test_the_initiators_and_the_responders_plans_fit_together(a: str, b: str) -> None:
    """What one side waits for, the other does: one QUIC dialler, one TCP dialler per
    simultaneous open (with opposite Noise roles), a dialler for every public side."""
    init, resp = plan(a, b, INIT), plan(b, a, RESP)
    if init.give_up or resp.give_up:
        assert init.give_up == resp.give_up
        return
    assert {init.udp, resp.udp} in ({TRAV}, {HARD, EASY})
    assert init.udp_dials != resp.udp_dials
    assert sorted([init.tcp, resp.tcp]) in (sorted([DIAL, ACCEPT]), sorted([DIAL, DAR]))
    assert (init.padding > 0) is (resp.padding > 0) is (init.udp is not TRAV)


# --- dual stack: IPv6 candidates are punched whatever the IPv4 NATs are ------------------------

V6 = Endpoint.parse("[2001:db8:1::a]:4001")


def with_v6(kind: str, ip6: Endpoint = V6) -> Offer:
    offer = KINDS[kind]
    return replace(offer, udp=(*offer.udp, ip6) if offer.udp else (),
                   tcp=(*offer.tcp, ip6) if offer.tcp else ())


@pytest.mark.parametrize(("ours", "theirs", "role", "dials", "tcp"), [
    ("symmetric", "symmetric", INIT, True, DIAL),
    ("symmetric", "symmetric", RESP, False, DAR),
    ("cone", "symmetric", INIT, True, DIAL),   # birthday probing is not needed: IPv6 is there
    ("symmetric", "cone", RESP, False, DAR),
    ("public", "symmetric", RESP, False, ACCEPT),
])
def test_with_ipv6_on_both_sides_udp_is_a_traversal_and_nothing_is_paid(
        ours: str, theirs: str, role: Role, dials: bool, tcp: TcpPath) -> None:
    p = plan_punch(with_v6(ours), with_v6(theirs), role, PunchConfig())
    assert (p.give_up, p.udp, p.udp_dials, p.tcp, p.padding, p.birthday) == (
        None, TRAV, dials, tcp, 0, None)


def test_two_symmetric_sides_with_ipv6_have_plans_that_fit_together() -> None:
    init = plan_punch(with_v6("symmetric"), with_v6("symmetric"), INIT, PunchConfig())
    resp = plan_punch(with_v6("symmetric"), with_v6("symmetric"), RESP, PunchConfig())
    assert init.udp_dials != resp.udp_dials  # one QUIC dialler
    assert {init.tcp, resp.tcp} == {DIAL, DAR}  # a simultaneous open with opposite roles


@pytest.mark.parametrize(("ours", "theirs"), [
    (with_v6("symmetric"), KINDS["symmetric"]),  # only one side has IPv6
    (KINDS["symmetric"], with_v6("symmetric")),
    # addresses that never reach another site do not count: unique local, link-local, mapped
    (with_v6("symmetric", Endpoint.parse("[fd00::2]:4001")),
     with_v6("symmetric", Endpoint.parse("[fd00::3]:4001"))),
    (with_v6("symmetric", Endpoint.parse("[fe80::1]:4001")),
     with_v6("symmetric", Endpoint.parse("[fe80::2]:4001"))),
    (with_v6("symmetric", Endpoint.parse("[::ffff:198.18.0.30]:4001")),
     with_v6("symmetric", Endpoint.parse("[::ffff:198.18.0.31]:4001"))),
])
def test_two_symmetric_sides_without_ipv6_on_both_still_give_up(ours: Offer,
                                                                theirs: Offer) -> None:
    p = plan_punch(ours, theirs, INIT, PunchConfig())
    assert p.give_up is not None and "endpoint-dependent" in p.give_up
    assert (p.udp, p.tcp, p.padding) == (None, None, 0)


def test_one_symmetric_side_without_ipv6_on_both_still_goes_birthday() -> None:
    p = plan_punch(with_v6("cone"), KINDS["symmetric"], INIT, PunchConfig())
    assert (p.udp, p.padding) == (EASY, E)


@pytest.mark.parametrize(("a", "b"), list(itertools.product(KINDS, repeat=2)))
def test_tcp_waits_for_udp_only_where_both_udp_mappings_are_endpoint_independent(
        a: str, b: str) -> None:
    """Both sides decide alike (their simultaneous opens start together): TCP waits only
    for a traversal between two endpoint-independent mappings, never without a TCP path."""
    init, resp = plan(a, b, INIT), plan(b, a, RESP)
    both_ei = not {a, b} & {"symmetric", "unknown"}
    for p in (init, resp):
        assert p.tcp_after_udp is (both_ei and p.udp is TRAV and p.tcp is not None)
    if {a, b} <= {"public", "cone"}:  # both have both paths: the two sides agree
        assert init.tcp_after_udp is resp.tcp_after_udp is True


@pytest.mark.parametrize(("rtt", "grace"), [(0.0, TCP_GRACE_MIN), (0.001, TCP_GRACE_MIN),
                                            (0.04, 0.08), (0.2, 0.4), (5.0, TCP_GRACE_MAX)])
def test_the_tcp_grace_is_two_coordination_round_trips_within_bounds(rtt: float,
                                                                      grace: float) -> None:
    assert tcp_grace(rtt) == pytest.approx(grace)
