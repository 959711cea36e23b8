"""Carrier-grade NAT: home NATs behind a CGNAT on 100.64.0.0/10, reached from another home."""

from __future__ import annotations

import pytest

from tests.lab.test_punch_lab import connect, listen, start_relay
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


@pytest.mark.parametrize("carrier", [Nat.CONE, Nat.SYMMETRIC])
def test_two_homes_behind_one_cgnat_without_hairpin_stay_on_the_relay(
        lab: Lab, carrier: Nat) -> None:
    relay, reflectors = start_relay(lab)
    cgnat = lab.site("isp", carrier, hosts=0, carrier=True)
    first, second = (lab.site(name, Nat.CONE, behind=cgnat) for name in ("home1", "home2"))
    peer = listen(second.hosts[0], relay, reflectors)
    result = connect(first.hosts[0], peer, relay, reflectors)
    # both see the CGNAT's one public address, and it does not turn packets around
    assert result["path"] == "relayed" and result["echo_ok"], result
    assert result["punch_error"], result
