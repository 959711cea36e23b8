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
    network_rtt,
    plan_punch,
    punch_wait,
    tcp_grace,
    traversal_candidates,
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
    ("symmetric", "unknown", RESP, False, DAR),
])
def test_with_ipv6_on_both_sides_a_hard_ipv4_pair_traverses_ipv6_alone_and_pays_nothing(
        ours: str, theirs: str, role: Role, dials: bool, tcp: TcpPath) -> None:
    p = plan_punch(with_v6(ours), with_v6(theirs), role, PunchConfig())
    assert (p.give_up, p.udp, p.udp_dials, p.tcp, p.padding, p.birthday) == (
        None, TRAV, dials, tcp, 0, None)
    # both IPv4 sides endpoint-dependent: no IPv4 traversal, IPv6 only (unknown: both)
    assert p.traversal_versions == ({6} if theirs == "symmetric" else {4, 6})
    assert p.traversal_dials is dials


def test_two_cone_sides_with_ipv6_traverse_both_families_at_once() -> None:
    p = plan_punch(with_v6("cone"), with_v6("cone"), INIT, PunchConfig())
    assert (p.udp, p.traversal_versions, p.birthday, p.padding) == (TRAV, {4, 6}, None, 0)


@pytest.mark.parametrize(("ours", "theirs", "role", "udp", "padding"), [
    ("cone", "symmetric", INIT, EASY, E),
    ("cone", "symmetric", RESP, EASY, E),
    ("symmetric", "cone", INIT, HARD, H),
    ("symmetric", "public", RESP, HARD, H),
    ("public", "symmetric", RESP, EASY, E),
])
def test_birthday_probing_on_ipv4_runs_beside_the_ipv6_traversal(
        ours: str, theirs: str, role: Role, udp: UdpPath, padding: int) -> None:
    """Before 1.1.0, IPv6 candidates on both sides replaced birthday probing: an NPTv6,
    a NAT66 or a broken IPv6 path then left a hard IPv4 pair on the relay."""
    p = plan_punch(with_v6(ours), with_v6(theirs), role, PunchConfig())
    assert (p.give_up, p.udp, p.padding, p.traversal_versions) == (None, udp, padding, {6})
    assert p.udp_dials is (udp is HARD)  # the hard side dials over birthday probing ...
    assert p.traversal_dials is (role is INIT)  # ... the initiator over the traversal


def v6_hint(offer: Offer, hint: MappingHint) -> Offer:
    return replace(offer, mapping6=hint)


@pytest.mark.parametrize(("ours6", "theirs6", "versions"), [
    (ED, EI, set()), (EI, ED, set()), (ED, ED, set()),  # a NAT66 on a side: no IPv6 path
    (EI, EI, {6}), (UNKNOWN, EI, {6}), (UNKNOWN, UNKNOWN, {6}),
])
def test_the_ipv6_traversal_follows_the_ipv6_hints(ours6: MappingHint, theirs6: MappingHint,
                                                   versions: set[int]) -> None:
    p = plan_punch(v6_hint(with_v6("cone"), ours6), v6_hint(with_v6("symmetric"), theirs6),
                   INIT, PunchConfig())
    assert (p.udp, p.padding, p.traversal_versions) == (EASY, E, versions)


def test_two_hard_ipv4_sides_with_two_hard_ipv6_sides_give_up() -> None:
    hard6 = v6_hint(with_v6("symmetric"), ED)
    p = plan_punch(hard6, hard6, INIT, PunchConfig())
    assert p.give_up is not None and "no IPv6 path" in p.give_up
    assert (p.udp, p.tcp, p.padding) == (None, None, 0)
    # one IPv6 side endpoint-independent: no UDP path (birthday is IPv4's), TCP is tried
    p = plan_punch(hard6, v6_hint(with_v6("symmetric"), EI), INIT, PunchConfig())
    assert (p.give_up, p.udp, p.traversal_versions, p.tcp) == (None, None, set(), DIAL)


HINTS = (EI, ED, UNKNOWN)


@pytest.mark.parametrize(("a", "b"), list(itertools.product(
    [(k, h) for k in ("public", "cone", "symmetric", "unknown") for h in HINTS], repeat=2)))
def test_dual_stack_plans_fit_together_for_every_pair_of_hints(
        a: tuple[str, MappingHint], b: tuple[str, MappingHint]) -> None:
    """Whatever the two sides' IPv4 and IPv6 hints: the same families traversed on both
    sides with one QUIC dialler, complementary birthday sides, padding only with them."""
    offer_a, offer_b = v6_hint(with_v6(a[0]), a[1]), v6_hint(with_v6(b[0]), b[1])
    init = plan_punch(offer_a, offer_b, INIT, PunchConfig())
    resp = plan_punch(offer_b, offer_a, RESP, PunchConfig())
    assert init.give_up == resp.give_up
    if init.give_up:
        return
    assert init.traversal_versions == resp.traversal_versions
    if init.traversal_versions:
        assert (init.traversal_dials, resp.traversal_dials) == (True, False)
    birthday = {init.udp, resp.udp} - {TRAV, None}
    assert birthday in (set(), {HARD, EASY})
    if birthday:
        assert init.udp_dials != resp.udp_dials
    assert (init.padding > 0) is (resp.padding > 0) is bool(birthday)
    assert 4 not in init.traversal_versions or not birthday


def test_traversal_candidates_keep_the_families_asked_for_in_order() -> None:
    mixed = (Endpoint.parse("198.18.0.20:4001"), V6, Endpoint.parse("[fd00::2]:4001"),
             Endpoint.parse("10.1.0.10:4001"))
    assert traversal_candidates(mixed, frozenset({6})) == (V6,)
    assert traversal_candidates(mixed, frozenset({4})) == (mixed[0], mixed[2], mixed[3])
    assert traversal_candidates(mixed, frozenset({4, 6})) == mixed
    assert traversal_candidates(mixed, frozenset()) == ()


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
    assert (p.udp, p.padding, p.traversal_versions) == (EASY, E, set())


def test_a_side_with_only_ipv6_udp_candidates_is_not_paid_for_birthday_probing() -> None:
    only6 = replace(KINDS["symmetric"], udp=(V6,))
    p = plan_punch(only6, with_v6("cone"), INIT, PunchConfig())
    assert (p.udp, p.padding) == (HARD, 0)  # we probe their IPv4; they cannot probe ours
    assert plan_punch(with_v6("cone"), only6, RESP, PunchConfig()).udp is TRAV


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


@pytest.mark.parametrize(("hint6", "waits"), [(EI, True), (UNKNOWN, False), (ED, False)])
def test_tcp_waits_for_an_ipv6_traversal_both_ipv6_sides_measured_independent(
        hint6: MappingHint, waits: bool) -> None:
    """Two symmetric IPv4 sides behind IPv6 firewalls: the UDP traversal runs over IPv6
    alone, and TCP waits for it exactly when both IPv6 rounds agreed (both sides alike)."""
    ours = v6_hint(with_v6("symmetric"), EI)
    theirs = v6_hint(with_v6("symmetric"), hint6)
    init, resp = plan_punch(ours, theirs, INIT, PunchConfig()), plan_punch(theirs, ours, RESP,
                                                                            PunchConfig())
    assert init.tcp_after_udp is resp.tcp_after_udp is waits
    assert init.traversal_versions == ({6} if hint6 is not ED else set())



@pytest.mark.parametrize(("measured", "turnaround_us", "rtt"), [
    (0.030, 0, 0.030),          # a peer that says nothing of its processing: all network
    (0.030, 4_000, 0.026),      # 4 ms of the 30 were the responder's accept and planning
    (0.030, 30_000, 0.0),       # all of it
    (0.030, 60_000_000, 0.0),   # a peer claiming more than the round trip: clamped at 0
    (0.0, 1_000, 0.0),
])
def test_the_network_rtt_is_the_round_trip_less_the_responders_turnaround(
        measured: float, turnaround_us: int, rtt: float) -> None:
    assert network_rtt(measured, turnaround_us) == pytest.approx(rtt)
    assert punch_wait(measured, turnaround_us) == pytest.approx(rtt / 2)


def test_the_initiator_starts_with_the_responder_whatever_the_responders_turnaround() -> None:
    """The 2026-12-03 trace (20 ms RTT): a one-way delay d each way, the responder spending t
    between the stream's arrival and its Offer. It punches as Sync arrives (d after the
    initiator sent it, right on the Offer); the initiator waits `punch_wait` after Sync. Before
    1.2.0 it waited (2d + t) / 2: t/2 late, 1-4 ms of the trace's 3-10 ms."""
    d = 0.010
    for t in (0.0, 0.002, 0.008, 0.030):
        offer_back = 2 * d + t                    # from the Offer's write, on the initiator
        responder_punches = offer_back + d        # Sync written at once, d on the way
        initiator_punches = offer_back + punch_wait(offer_back, round(t * 1e6))
        assert initiator_punches == pytest.approx(responder_punches, abs=1e-6)
