"""Discovery through real NATs: `meshnat reflector` on public hosts, `meshnat discover` behind."""

from __future__ import annotations

import json

import pytest

from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab

PORT = 5000


def start_reflectors(lab: Lab, count: int = 3, *, ipv6: bool = False) -> list[str]:
    """`count` public reflectors (dual-stack ones with `ipv6`); their multiaddrs."""
    addrs: list[str] = []
    for i in range(count):
        host = lab.public_host(f"refl{i}")
        flags = ["--ipv6"] if ipv6 else []
        _, ready = host.start_json(host.python("-m", "meshnat", "reflector", "--json", *flags),
                                   timeout=30)
        assert ready["event"] == "ready"
        mine = (f"/ip4/{host.ip}/", f"/ip6/{host.ip6}/")[:1 + ipv6]
        assert all(a.startswith(mine) for a in ready["addrs"])  # concrete, never 0.0.0.0
        addrs.extend(ready["addrs"])
    return addrs


def discover(host: Host, reflectors: list[str], transport: str) -> tuple[int, dict]:
    args = ["-m", "meshnat", "discover", "--json", "--transport", transport, "--port", str(PORT)]
    for addr in reflectors:
        args += ["--reflector", addr]
    proc = host.run(host.python(*args), timeout=60)
    return proc.returncode, json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_behind_a_cone_nat_three_reflectors_agree_on_the_mapped_endpoint(
    lab: Lab, transport: str
) -> None:
    reflectors = start_reflectors(lab)
    site = lab.site("home", Nat.CONE)
    code, result = discover(site.hosts[0], reflectors, transport)
    assert code == 0, result
    # masquerade keeps a free source port: the mapping is the router's IP and our port
    assert result["address"] == f"{site.public_ip}:{PORT}"
    assert f"{site.hosts[0].ip}:{PORT}" in result["local"] and result["behind_nat"] is True
    assert result["voters"] == 3 and result["dissent"] == []
    assert set(result["rtt_ms"]) and all(v > 0 for v in result["rtt_ms"].values())


def test_behind_a_symmetric_nat_udp_discovery_reports_an_endpoint_dependent_mapping(
    lab: Lab,
) -> None:
    reflectors = start_reflectors(lab)
    site = lab.site("carrier", Nat.SYMMETRIC)
    code, result = discover(site.hosts[0], reflectors, "udp")
    assert code == 1 and result["error"] == "no-consensus"
    assert result["endpoint_dependent"] is True and result["mapping"] == "endpoint-dependent"
    assert result["ip"] == site.public_ip and result["address"] is None
    assert len(result["votes"]) == 3  # three reflectors, three different ports


def test_a_public_host_sees_its_own_address(lab: Lab) -> None:
    reflectors = start_reflectors(lab)
    host = lab.public_host("server")
    code, result = discover(host, reflectors, "udp")
    assert code == 0 and result["address"] == f"{host.ip}:{PORT}"
    assert result["address"] in result["local"] and result["behind_nat"] is False


def test_reflectors_stop_cleanly_on_sigterm(lab: Lab) -> None:
    host = lab.public_host("refl")
    proc, ready = host.start_json(host.python("-m", "meshnat", "reflector", "--json"),
                                  timeout=30)
    assert ready["event"] == "ready"
    proc.terminate()  # `ip netns exec` passes the signal on to the reflector
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["event"] == "stopped"
