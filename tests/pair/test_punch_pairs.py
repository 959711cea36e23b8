"""Every NAT-kind pair, planned by `plan_punch` and punched by the pure sessions through the
simulator: the outcome each pair must reach on a clean path (20 ms one way).

- both endpoint-independent: a direct punch, each side heard from the other's public
  endpoint on its first probe;
- one endpoint-dependent side: birthday probing. Against an easy side whose filtering lets
  the hard side's probes in (no NAT, endpoint-independent or address-dependent filtering) it
  cannot fail; against a port-restricted one it succeeds as often as the birthday bound says;
- both endpoint-dependent: the plan gives up before sending anything, and rightly so: a
  direct punch tried anyway fails on both sides by its deadline;
- UDP blocked on a side: it has no UDP candidate, the peer runs no UDP path, and its own
  probes never leave the site.
"""

from __future__ import annotations

import math
from ipaddress import ip_address

import pytest

from meshnat.punch.birthday import ANSWER_COPIES, HeardOn
from meshnat.punch.config import PunchConfig
from meshnat.punch.core import GaveUp, Heard
from meshnat.punch.messages import MappingHint, Offer
from meshnat.punch.plan import UdpPath
from tests.pair.harness import run
from tests.pair.kinds import (
    ADDRESS_DEPENDENT,
    APDF,
    CONE,
    ORDERED,
    PORT,
    REFLECTOR,
    SYMMETRIC,
    SYMMETRIC_SEQUENTIAL,
    NatKind,
    discover,
)
from tests.pair.punch_cores import (
    TXID,
    Scenario,
    broken_invariants,
    direct_core,
    expected,
    heard_from,
    punch_scenario,
)
from tests.support.natsim import SimNet

HARD = MappingHint.ENDPOINT_DEPENDENT
DELAY = 0.02  # the default PathModel's one-way delay


def _id(pair: tuple[NatKind, NatKind]) -> str:
    return f"{pair[0]}-{pair[1]}"


def check_heard_each_other(s: Scenario, outcomes: list[object]) -> None:
    for i, outcome in enumerate(outcomes):
        peer, remote = s.sides[1 - i], heard_from(outcome)
        assert peer.core is not None and remote is not None
        assert s.net.who(remote) in peer.core.sockets


@pytest.mark.parametrize("pair", ORDERED, ids=_id)
def test_every_pair_reaches_the_outcome_its_nats_allow(pair: tuple[NatKind, NatKind]) -> None:
    s = punch_scenario(*pair, seed=1)
    result = s.run()
    assert broken_invariants(s, result) == []
    traces = [s.trace(result, i) for i in (0, 1)]
    outcomes = [None if t is None else t.outcome for t in traces]
    match expected(*pair):
        case "punched":
            assert [side.plan.udp for side in s.sides] == [UdpPath.TRAVERSAL] * 2
            for i, t in enumerate(traces):
                assert t is not None
                assert heard_from(t.outcome) == s.sides[1 - i].offer.udp[0]
                assert len(t.sent) == 1 + ANSWER_COPIES  # its first probe; answers to the peer
                assert (t.finished_at or math.inf) - s.sides[i].start <= DELAY + 1e-9
        case "birthday":
            hard = [side.offer.mapping for side in s.sides].index(HARD)
            easy = s.sides[1 - hard]
            assert s.sides[hard].plan.udp is UdpPath.BIRTHDAY_HARD
            assert easy.plan.udp is UdpPath.BIRTHDAY_EASY
            if easy.kind.mapping is None or easy.kind.filtering is not APDF:
                # the hard side's first round gets in: the easy side hears it at once
                assert isinstance(outcomes[1 - hard], Heard)
                assert isinstance(outcomes[hard], HeardOn)
                check_heard_each_other(s, outcomes)
            else:  # as often as the birthday bound says (below); both ends agree
                assert isinstance(outcomes[0], GaveUp) == isinstance(outcomes[1], GaveUp)
        case "relay":
            assert all(side.plan.give_up and side.core is None for side in s.sides)
            assert s.net.statistics().sent == 2  # only the two discovery probes
        case "no-udp":
            for side, t in zip(s.sides, traces, strict=True):
                if side.kind.blocked and t is not None:
                    assert isinstance(t.outcome, GaveUp)
                    assert t.finished_at == pytest.approx(side.start + side.plan.path_timeout)
                else:  # the blocked peer offered no UDP candidate: nothing to punch to
                    assert side.plan.udp is None and side.core is None
            dropped = s.net.statistics().dropped
            assert set(dropped) <= {"blocked"} and dropped


@pytest.mark.parametrize("pair", [p for p in ORDERED if expected(*p) == "relay"], ids=_id)
def test_two_endpoint_dependent_sides_cannot_punch_directly(pair: tuple[NatKind,
                                                                        NatKind]) -> None:
    """Why the plan gives up: each side's probes go to the mapping the peer's NAT made for the
    reflector, which filters them; both sessions end with GaveUp at their deadline."""
    s = punch_scenario(*pair, seed=1)
    config = PunchConfig()
    cores = [direct_core(side.host, s.sides[1 - i].offer, config)
             for i, side in enumerate(s.sides)]
    start = s.net.now + 0.1
    result = run(s.net, cores, [start, start], until=start + config.punch_timeout + 1)
    for t in result.traces:
        assert isinstance(t.outcome, GaveUp) and not t.received
        assert t.finished_at == pytest.approx(start + config.punch_timeout)
    assert set(s.net.statistics().dropped) == {"filtered"}


def birthday_success(sockets: int, probes: int, ports: int) -> float:
    """P(at least one of `probes` distinct random ports is one of `sockets` mapped ports, out
    of `ports`): 1 - C(ports - sockets, probes) / C(ports, probes)."""
    return 1 - math.comb(ports - sockets, probes) / math.comb(ports, probes)


def binomial_band(n: int, p: float, tail: float) -> tuple[int, int]:
    """The successes out of `n` outside which each tail has probability below `tail`."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    low = next(k for k in range(n + 1) if sum(pmf[: k + 1]) >= tail)
    high = next(k for k in range(n, -1, -1) if sum(pmf[k:]) >= tail)
    return low, high


def birthday_runs(n: int, config: PunchConfig, port_range: tuple[int, int],
                  hard: NatKind = SYMMETRIC) -> int:
    successes = 0
    for seed in range(n):
        s = punch_scenario(CONE, hard, seed=seed, config=config, port_range=port_range)
        result = s.run()
        assert broken_invariants(s, result) == []
        outcomes = [s.trace(result, i).outcome for i in (0, 1)]  # type: ignore[union-attr]
        assert isinstance(outcomes[0], GaveUp) == isinstance(outcomes[1], GaveUp)
        successes += isinstance(outcomes[0], Heard)
    return successes


@pytest.mark.parametrize("hard", [SYMMETRIC, SYMMETRIC_SEQUENTIAL, ADDRESS_DEPENDENT], ids=str)
def test_birthday_probing_a_port_restricted_cone_succeeds_as_the_bound_says(
        hard: NatKind) -> None:
    """A small port range and budget put the success rate near one half, where a wrong model
    (ports reused, probes repeated, mappings missing) shows: 400 runs must fall in the band
    whose tails each have probability < 1e-6 under the derived rate. The hard side's port
    allocation does not matter: the easy side's ports are uniformly random."""
    low_port, high_port = 1024, 4095
    config = PunchConfig(birthday_sockets=8, birthday_max_probes=256)
    p = birthday_success(8, 256, high_port - low_port + 1)
    assert 0.4 < p < 0.6  # 0.49
    low, high = binomial_band(400, p, 1e-6)
    assert low <= birthday_runs(400, config, (low_port, high_port), hard) <= high


def test_birthday_probing_with_the_default_budget_almost_always_succeeds() -> None:
    """256 sockets and 2048 probes over 64,512 ports: P(fail) = 3e-4 (Tailscale: ~99.9%)."""
    config = PunchConfig()
    p = birthday_success(config.birthday_sockets, config.birthday_max_probes, 65535 - 1024 + 1)
    assert 1 - p < 5e-4
    low, _ = binomial_band(60, p, 1e-6)
    assert birthday_runs(60, config, (1024, 65535)) >= low


@pytest.mark.parametrize(("hairpin", "lan", "heard"), [
    (True, False, "public"),  # through the NAT and back (RFC 4787 §6)
    (False, False, None),  # no hairpin, no LAN candidate: nothing gets through
    (False, True, "lan"),  # the LAN candidate needs no NAT at all
])
def test_two_nodes_behind_one_nat_punch_by_hairpin_or_over_the_lan(
        hairpin: bool, lan: bool, heard: str | None) -> None:
    net = SimNet(1)
    net.add_host(REFLECTOR.ip)
    nat = net.add_nat(ip_address("198.18.0.11"), hairpin=hairpin)
    hosts = [net.add_host(ip_address(f"10.1.0.{10 + i}"), behind=nat) for i in (0, 1)]
    public = [seen for h in hosts if (seen := discover(net, h.endpoint(PORT)))]
    assert len(public) == 2 and public[0] != public[1]  # the second could not keep 4001
    offers = [Offer(TXID, (p,) + ((h.endpoint(PORT),) if lan else ()), (), MappingHint.
                    ENDPOINT_INDEPENDENT) for p, h in zip(public, hosts, strict=True)]
    cores = [direct_core(hosts[i], offers[1 - i], PunchConfig()) for i in (0, 1)]
    start = net.now + 0.1
    result = run(net, cores, [start, start], until=start + 4)
    for i, trace in enumerate(result.traces):
        remote = heard_from(trace.outcome)
        if heard is None:
            assert isinstance(trace.outcome, GaveUp)
            continue
        peer = hosts[1 - i].endpoint(PORT)
        assert remote == (public[1 - i] if heard == "public" else peer)
        assert net.who(remote) == peer
