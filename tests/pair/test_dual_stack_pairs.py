"""Dual-stack pairs: each node has an IPv4 host behind one NAT kind and an IPv6 host behind
another, both discovered over a clean path; the two Offers carry a mapping hint per family
(`/meshnat/punch/1.1.0`) and `plan_punch` plans each family from its own hints. The pure
sessions then punch through the simulator: birthday probing on the IPv4 hosts, the traversal
(stood in for by `direct_core`, as in test_punch_pairs.py) on the hosts of each family it
names.

IPv6 kinds: `FIREWALL6` is a global address behind a stateful firewall (RFC 6092: inbound only
from where the host sent), which the simulator models as an endpoint-independent,
port-preserving translator with address-and-port-dependent filtering: the address the peer
learns differs from the host's, but nothing a punch sees does (an NPTv6 prefix translator
behaves alike). `NAT66` is an endpoint-dependent translator with random ports.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from ipaddress import ip_address

import pytest

from meshnat.endpoint import Endpoint
from meshnat.punch.birthday import HeardOn
from meshnat.punch.config import PunchConfig
from meshnat.punch.core import GaveUp, Heard
from meshnat.punch.messages import MappingHint, Offer
from meshnat.punch.plan import PunchPlan, Role, UdpPath, plan_punch, traversal_candidates
from tests.pair.harness import PairCore, Run, run
from tests.pair.kinds import (
    APDF,
    APDM,
    CONE,
    EIM,
    LAB_KINDS,
    PORT,
    REFLECTOR,
    SYMMETRIC,
    NatKind,
    add_site,
    discover,
)
from tests.pair.punch_cores import TXID, SessionCore, direct_core, expected, session_core
from tests.support.natsim import Host, SimNet

FIREWALL6 = NatKind("firewall6", EIM)
NAT66 = NatKind("nat66", APDM, allocation=SYMMETRIC.allocation)
REFLECTOR6 = Endpoint.parse("[2001:db8:ff::2]:4001")
V6_PAIRS = [(FIREWALL6, FIREWALL6), (FIREWALL6, NAT66), (NAT66, FIREWALL6), (NAT66, NAT66)]
V4_PAIRS = [(a, b) for a in LAB_KINDS for b in LAB_KINDS]


def add_site6(net: SimNet, kind: NatKind, n: int) -> Host:
    """Site `n`'s IPv6 host: public, or behind a firewall or NAT66 of `kind`."""
    if kind.mapping is None:
        return net.add_host(ip_address(f"2001:db8:ff::{100 + n}"))
    nat = net.add_nat(ip_address(f"2001:db8:ff::{10 + n}"), mapping=kind.mapping,
                      filtering=kind.filtering, allocation=kind.allocation)
    return net.add_host(ip_address(f"2001:db8:{n}::10"), behind=nat)


@dataclass(frozen=True, slots=True)
class DualSide:
    kinds: tuple[NatKind, NatKind]
    """IPv4, IPv6."""
    hosts: dict[int, Host]
    offer: Offer
    plan: PunchPlan
    cores: dict[str, SessionCore]
    """"birthday" (IPv4) and "traversal4" / "traversal6", as the plan says."""


def dual_scenario(v4: tuple[NatKind, NatKind], v6: tuple[NatKind, NatKind], *, seed: int,
                  mapping6: tuple[MappingHint, MappingHint] | None = None
                  ) -> tuple[SimNet, tuple[DualSide, DualSide], float]:
    """Two dual-stack nodes (initiator, responder) and when both start. `mapping6` overrides
    the IPv6 hints the Offers carry (default: what each side's IPv6 kind shows)."""
    config = PunchConfig()
    net = SimNet(seed)
    net.add_host(REFLECTOR.ip)
    net.add_host(REFLECTOR6.ip)
    hosts = [{4: add_site(net, v4[i], i + 1), 6: add_site6(net, v6[i], i + 1)} for i in (0, 1)]
    offers = []
    for i in (0, 1):
        seen = [discover(net, hosts[i][4].endpoint(PORT)),
                discover(net, hosts[i][6].endpoint(PORT), REFLECTOR6)]
        hint6 = v6[i].hint if mapping6 is None else mapping6[i]
        offers.append(Offer(TXID, tuple(e for e in seen if e is not None), (), v4[i].hint,
                            mapping6=hint6))
    sides = []
    for i, role in enumerate((Role.INITIATOR, Role.RESPONDER)):
        theirs = offers[1 - i]
        plan = plan_punch(offers[i], theirs, role, config)
        cores: dict[str, SessionCore] = {}
        if plan.birthday is not None:
            only4 = replace(theirs, udp=traversal_candidates(theirs.udp, frozenset({4})))
            core, _ = session_core(plan, hosts[i][4], only4, config,
                                   random.Random(seed * 2 + i), (1024, 65535))
            assert core is not None
            cores["birthday"] = core
        for version in sorted(plan.traversal_versions):
            family = replace(theirs, udp=traversal_candidates(theirs.udp, frozenset({version})))
            cores[f"traversal{version}"] = direct_core(hosts[i][version], family, config)
        sides.append(DualSide((v4[i], v6[i]), hosts[i], offers[i], plan, cores))
    return net, (sides[0], sides[1]), net.now + 0.1


def run_sides(net: SimNet, sides: tuple[DualSide, DualSide], start: float,
              names: tuple[str, ...] | None = None) -> dict[tuple[int, str], object]:
    """Run every core of both sides (or only those `names`) from `start` past the plans'
    backstops: each (side, core name)'s outcome, checked against what no run may do."""
    keys = [(i, name) for i, side in enumerate(sides) for name in side.cores
            if names is None or name in names]
    cores: list[PairCore] = [sides[i].cores[name] for i, name in keys]
    end = start + max(side.plan.backstop for side in sides)
    result: Run = run(net, cores, [start] * len(cores), until=end)
    outcomes: dict[tuple[int, str], object] = {}
    for (i, name), trace in zip(keys, result.traces, strict=True):
        assert len(trace.outcomes) == 1 and not trace.after_finish, (i, name)
        assert not trace.foreign_sources
        outcome = trace.outcome
        if isinstance(outcome, Heard | HeardOn):  # heard from a socket of the peer's
            peer_sockets = set().union(*(c.sockets for c in sides[1 - i].cores.values()))
            assert net.who(outcome.remote) in peer_sockets, (i, name)
        outcomes[(i, name)] = outcome
    return outcomes


def direct_over(outcomes: dict[tuple[int, str], object]) -> set[str]:
    """The paths (core names) on which both sides heard each other."""
    heard = {key for key, outcome in outcomes.items() if isinstance(outcome, Heard | HeardOn)}
    return {name for (i, name) in heard if (1 - i, name) in heard}


def _id(v4: tuple[NatKind, NatKind], v6: tuple[NatKind, NatKind]) -> str:
    return f"{v4[0]}-{v4[1]}/{v6[0]}-{v6[1]}"


CASES = [(a, b) for a in V4_PAIRS for b in V6_PAIRS]


@pytest.mark.parametrize(("v4", "v6"), CASES, ids=[_id(*c) for c in CASES])
def test_every_dual_stack_pair_gets_each_familys_own_path(
        v4: tuple[NatKind, NatKind], v6: tuple[NatKind, NatKind]) -> None:
    net, sides, start = dual_scenario(v4, v6, seed=1)
    init, resp = sides
    v6_open = v6 == (FIREWALL6, FIREWALL6)  # a NAT66 on either side: no IPv6 traversal
    ipv4 = expected(*v4)
    assert (6 in init.plan.traversal_versions) is v6_open
    assert (init.plan.udp in (UdpPath.BIRTHDAY_HARD, UdpPath.BIRTHDAY_EASY)) is (
        ipv4 == "birthday")  # whatever IPv6 offers beside it
    if ipv4 == "relay" and not v6_open:
        assert init.plan.give_up and resp.plan.give_up and not init.cores and not resp.cores
        return
    paths = direct_over(run_sides(net, sides, start))
    assert ("traversal6" in paths) is v6_open
    if ipv4 == "punched":
        assert "traversal4" in paths
    elif ipv4 == "birthday" and any(
            k[0].mapping is None or k[0].filtering is not APDF for k in (init.kinds, resp.kinds)
            if k[0] is not SYMMETRIC):
        assert "birthday" in paths  # the hard side's first round gets in
    if ipv4 in ("relay", "no-udp"):
        assert paths <= {"traversal6"}


def test_a_nat66_defeats_the_ipv6_traversal_that_punch_1_0_0_planned() -> None:
    """A cone and a symmetric IPv4 side, and a NAT66 in front of the cone side's IPv6: with
    1.0.0's plan (IPv6 candidates on both sides: a traversal of both families, no birthday
    probing) nothing gets through; with a hint per family birthday probing on IPv4 runs
    beside it and connects."""
    v4, v6 = (CONE, SYMMETRIC), (NAT66, FIREWALL6)
    net, sides, start = dual_scenario(v4, v6, seed=1)
    assert {s.plan.udp for s in sides} == {UdpPath.BIRTHDAY_EASY, UdpPath.BIRTHDAY_HARD}
    assert all(not s.plan.traversal_versions for s in sides)  # the NAT66 said so
    assert direct_over(run_sides(net, sides, start)) == {"birthday"}
    # the same sites, the IPv6 hints unknown (what 1.0.0 assumed): the IPv6 traversal runs
    # beside birthday probing, and alone (1.0.0's plan) it fails on both sides
    net, sides, start = dual_scenario(v4, v6, seed=1,
                                      mapping6=(MappingHint.UNKNOWN, MappingHint.UNKNOWN))
    assert all(s.plan.traversal_versions == {6} and s.plan.birthday for s in sides)
    alone = run_sides(net, sides, start, names=("traversal6",))
    assert all(isinstance(outcome, GaveUp) for outcome in alone.values())
    assert net.statistics().dropped.get("filtered", 0) > 0


def test_two_symmetric_ipv4_sides_behind_ipv6_firewalls_punch_over_ipv6_only() -> None:
    net, sides, start = dual_scenario((SYMMETRIC, SYMMETRIC), (FIREWALL6, FIREWALL6), seed=1)
    assert all(s.plan.traversal_versions == {6} and s.plan.birthday is None
               and s.plan.padding == 0 for s in sides)
    assert all(set(side.cores) == {"traversal6"} for side in sides)  # none on IPv4
    assert direct_over(run_sides(net, sides, start)) == {"traversal6"}
