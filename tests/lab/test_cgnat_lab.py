"""Carrier-grade NAT: home NATs behind a CGNAT on 100.64.0.0/10, reached from another home."""

from __future__ import annotations

import pytest

from tests.lab.test_classify_lab import probe
from tests.lab.test_discovery_lab import start_reflectors
from tests.lab.test_punch_lab import PORT, connect, listen, start_relay
from tests.support.netlab import Lab, Nat

pytestmark = pytest.mark.lab


@pytest.mark.parametrize(("carrier", "transport"), [
    (Nat.CONE, {"udp", "tcp"}),  # two endpoint-independent NATs in a row are one such NAT
    (Nat.SYMMETRIC, {"udp"}),  # an endpoint-dependent CGNAT: birthday probing, UDP only
])
def test_a_home_behind_a_cgnat_reaches_a_cone_home_directly(
        lab: Lab, carrier: Nat, transport: set[str]) -> None:
    relay, reflectors = start_relay(lab)
    cgnat = lab.site("isp", carrier, hosts=0, carrier=True)
    home = lab.site("home", Nat.CONE, behind=cgnat)
    other = lab.site("other", Nat.CONE)
    assert home.public_ip.startswith("100.64.")
    peer = listen(other.hosts[0], relay, reflectors)
    result = connect(home.hosts[0], peer, relay, reflectors)
    assert result["path"] == "punched" and result["transport"] in transport, result
    assert result["remote"].split(":")[0] == other.public_ip


@pytest.mark.parametrize(("carrier", "hairpin", "why"), [
    # both see the CGNAT's one public address, and it does not turn packets around
    (Nat.CONE, False, ""),
    (Nat.SYMMETRIC, False, ""),
    # it does, but with a fresh port per destination both homes look symmetric
    (Nat.SYMMETRIC, True, "both sides have endpoint-dependent mapping"),
])
def test_two_homes_behind_one_cgnat_without_a_usable_hairpin_stay_on_the_relay(
        lab: Lab, carrier: Nat, hairpin: bool, why: str) -> None:
    relay, reflectors = start_relay(lab)
    cgnat = lab.site("isp", carrier, hosts=0, carrier=True, hairpin=hairpin)
    first, second = (lab.site(name, Nat.CONE, behind=cgnat) for name in ("home1", "home2"))
    peer = listen(second.hosts[0], relay, reflectors)
    result = connect(first.hosts[0], peer, relay, reflectors)
    assert result["path"] == "relayed" and result["echo_ok"], result
    assert result["punch_error"] and why in result["punch_error"], result


@pytest.mark.parametrize(("home", "transports"), [
    (Nat.CONE, {"udp", "tcp"}),
    (Nat.UDP_BLOCKED, {"tcp"}),  # the hairpin turns TCP around too
])
def test_two_homes_behind_one_hairpinning_cgnat_punch_through_its_public_address(
        lab: Lab, home: Nat, transports: set[str]) -> None:
    relay, reflectors = start_relay(lab)
    cgnat = lab.site("isp", Nat.CONE, hosts=0, carrier=True, hairpin=True)
    first, second = lab.site("home1", home, behind=cgnat), lab.site("home2", Nat.CONE,
                                                                     behind=cgnat)
    peer = listen(second.hosts[0], relay, reflectors)
    for _ in range(2):  # a second run reuses the mappings the first one left
        result = connect(first.hosts[0], peer, relay, reflectors)
        assert result["path"] == "punched", result
        assert result["transport"] in transports, result
        # through the CGNAT's hairpin, to the listener's mapping at the shared public address
        # (the listener reached the reflectors first, so the CGNAT kept its port)
        assert result["remote"] == f"{cgnat.public_ip}:{PORT}", result


@pytest.mark.parametrize("hairpin", [False, True])
def test_the_classifier_sees_whether_the_cgnat_hairpins(lab: Lab, hairpin: bool) -> None:
    reflectors = start_reflectors(lab)
    cgnat = lab.site("isp", Nat.CONE, hosts=0, carrier=True, hairpin=hairpin)
    home = lab.site("home", Nat.CONE, behind=cgnat)
    report = probe(home.hosts[0], reflectors)
    assert report["nat_type"] == "port-restricted-cone", report
    assert report["public_addrs"] == [f"{cgnat.public_ip}:{PORT}"]
    assert report["hairpin"] is hairpin, report
