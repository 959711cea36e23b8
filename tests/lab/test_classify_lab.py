"""NAT classification through real NATs: one verdict per router kind, asserted."""

from __future__ import annotations

import json

import pytest

from tests.lab.test_discovery_lab import start_reflectors
from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab

PORT = 4001  # the port-forward kind forwards this one


def probe(host: Host, reflectors: list[str]) -> dict:
    args = ["-m", "meshnat", "probe", "--json", "--port", str(PORT)]
    for addr in reflectors:
        args += ["--reflector", addr]
    proc = host.run(host.python(*args), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_cone_nat_is_a_port_restricted_cone_without_hairpin(lab: Lab) -> None:
    reflectors = start_reflectors(lab)
    site = lab.site("home", Nat.CONE)
    report = probe(site.hosts[0], reflectors)
    assert report["nat_type"] == "port-restricted-cone", report
    assert report["mapping"] == "endpoint-independent"
    assert report["filtering"] == "address-and-port-dependent"
    assert report["port_allocation"] == "preserved"
    assert report["hairpin"] is False and report["behind_nat"] is True
    assert report["public_addrs"] == [f"{site.public_ip}:{PORT}"]


def test_symmetric_nat_has_endpoint_dependent_mapping_and_random_ports(lab: Lab) -> None:
    reflectors = start_reflectors(lab)
    site = lab.site("carrier", Nat.SYMMETRIC)
    report = probe(site.hosts[0], reflectors)
    assert report["nat_type"] == "symmetric", report
    assert report["mapping"] == "address-and-port-dependent"
    assert report["port_allocation"] == "random"
    assert {a.split(":")[0] for a in report["public_addrs"]} == {site.public_ip}
    assert len(report["public_addrs"]) == 4  # a new mapping for every destination


def test_public_host_is_open(lab: Lab) -> None:
    reflectors = start_reflectors(lab)
    host = lab.public_host("server")
    report = probe(host, reflectors)
    assert report["nat_type"] == "open", report
    assert report["behind_nat"] is False and report["hairpin"] is None
    assert report["filtering"] == "endpoint-independent"


def test_udp_blocking_firewall_is_udp_blocked(lab: Lab) -> None:
    reflectors = start_reflectors(lab)
    site = lab.site("office", Nat.UDP_BLOCKED)
    report = probe(site.hosts[0], reflectors)
    assert report["nat_type"] == "udp-blocked", report
    assert report["udp_blocked"] is True and report["mapping"] is None


def test_port_forward_is_a_full_cone_and_hairpins_when_the_router_does(lab: Lab) -> None:
    reflectors = start_reflectors(lab)
    plain = lab.site("fwd", Nat.PORT_FORWARD, forwarded_port=PORT)
    looping = lab.site("loop", Nat.PORT_FORWARD, forwarded_port=PORT, hairpin=True)
    for site, hairpin in ((plain, False), (looping, True)):
        report = probe(site.hosts[0], reflectors)
        assert report["nat_type"] == "full-cone", report
        assert report["filtering"] == "endpoint-independent"
        assert report["mapping"] == "endpoint-independent"
        assert report["hairpin"] is hairpin, (site.name, report)


def test_double_nat_classifies_as_the_outer_cone(lab: Lab) -> None:
    reflectors = start_reflectors(lab)
    outer = lab.site("isp", Nat.CONE, hosts=0)
    inner = lab.site("home", Nat.CONE, behind=outer)
    report = probe(inner.hosts[0], reflectors)
    assert report["nat_type"] == "port-restricted-cone", report
    assert report["public_addrs"] == [f"{outer.public_ip}:{PORT}"]


def test_one_reflector_gives_a_partial_report_that_says_why(lab: Lab) -> None:
    reflectors = start_reflectors(lab, count=1)
    site = lab.site("home", Nat.CONE)
    report = probe(site.hosts[0], reflectors)
    assert report["mapping"] is None and report["nat_type"] == "unknown"
    assert report["filtering"] is None  # only A's other port answered: not enough to tell
    assert any("two distinct IP addresses" in n for n in report["notes"])
