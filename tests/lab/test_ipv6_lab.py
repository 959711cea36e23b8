"""The dual-stack lab: IPv6 sites behind stateful firewalls (no NAT), checked with plain sockets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.netlab import Host, Lab, Nat
from tests.support.wan import Wan

pytestmark = pytest.mark.lab

NAIVE_PUNCH = str(Path(__file__).with_name("naive_punch.py"))
UDP_PROBE = str(Path(__file__).with_name("udp_probe.py"))
PORT = 40000
TCP_PORT = 7000

_TCP_ACCEPT_ONCE = """
import socket, sys
s = socket.create_server(("::", 7000), family=socket.AF_INET6); s.settimeout(float(sys.argv[1]))
print('{"ready": true}', flush=True)
try:
    conn, addr = s.accept()
except TimeoutError:
    print("none")
else:
    print(addr[0]); conn.close()
"""
_TCP_CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], 7000), timeout=float(sys.argv[2])).close()
"""


def _naive(host: Host, peer: str, *, timeout: float = 3) -> subprocess.Popen[str]:
    return host.popen(host.python(NAIVE_PUNCH, "--bind", str(PORT), "--peer", peer,
                                  "--timeout", str(timeout)))


def _result(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    result: dict = json.loads(out)
    return result


def _tcp_listener(host: Host, wait: float) -> subprocess.Popen[str]:
    proc, ready = host.start_json(["python3", "-c", _TCP_ACCEPT_ONCE, str(wait)], timeout=10)
    assert ready == {"ready": True}
    return proc


def test_an_ipv6_site_has_global_addresses_and_public_hosts_are_dual_stack(lab: Lab) -> None:
    site, legacy = lab.site("home", Nat.CONE, ipv6=True), lab.site("old", Nat.CONE)
    server = lab.public_host("server")
    inside = site.hosts[0]
    assert inside.ip6 is not None and inside.ip6.startswith("2001:db8:")
    assert server.ip6 is not None and legacy.hosts[0].ip6 is None
    addrs = inside.run(["ip", "-6", "addr", "show", "dev", "eth0"], timeout=10).stdout
    assert f"{inside.ip6}/64 scope global" in addrs
    # the IPv4 side is NATed as before: the server sees the router's address on IPv4
    listener = _tcp_listener(server, 10)
    v6 = inside.run(["python3", "-c", _TCP_CONNECT, server.ip6, "5"], timeout=15)
    assert v6.returncode == 0, v6.stderr
    assert listener.communicate(timeout=15)[0].strip() == inside.ip6  # IPv6: no NAT


def test_the_ipv6_firewall_drops_unsolicited_inbound_udp_and_tcp(lab: Lab) -> None:
    site = lab.site("home", Nat.SYMMETRIC, ipv6=True)
    outsider = lab.public_host("outsider")
    inside = site.hosts[0]
    # the inside host listens but never sends towards the outsider
    listener = _naive(inside, "[::1]:9", timeout=2)
    sender = _naive(outsider, f"[{inside.ip6}]:{PORT}", timeout=2)
    assert not _result(listener)["received"]
    assert not _result(sender)["received"]
    tcp = _tcp_listener(inside, 4)
    connect = outsider.run(["python3", "-c", _TCP_CONNECT, str(inside.ip6), "2"], timeout=15)
    assert connect.returncode != 0  # the SYN is dropped: the connect times out
    assert tcp.communicate(timeout=15)[0].strip() == "none"


def test_outbound_initiated_ipv6_flows_come_back_from_the_hosts_own_address(lab: Lab) -> None:
    site = lab.site("home", Nat.SYMMETRIC, ipv6=True)
    server = lab.public_host("server")
    inside = site.hosts[0]
    a, b = _naive(inside, f"[{server.ip6}]:{PORT}"), _naive(server, f"[{inside.ip6}]:{PORT}")
    ra, rb = _result(a), _result(b)
    assert ra["from"] == f"[{server.ip6}]:{PORT}"
    assert rb["from"] == f"[{inside.ip6}]:{PORT}"  # no translation: address and port kept


def test_two_symmetric_nats_defeat_a_naive_punch_on_ipv4_but_not_on_ipv6(lab: Lab) -> None:
    left = lab.site("left", Nat.SYMMETRIC, ipv6=True)
    right = lab.site("right", Nat.SYMMETRIC, ipv6=True)
    a, b = left.hosts[0], right.hosts[0]
    v4 = [_naive(a, f"{right.public_ip}:{PORT}"), _naive(b, f"{left.public_ip}:{PORT}")]
    assert not any(_result(p)["received"] for p in v4)
    v6 = [_naive(a, f"[{b.ip6}]:{PORT}"), _naive(b, f"[{a.ip6}]:{PORT}")]
    ra, rb = (_result(p) for p in v6)
    assert ra["from"] == f"[{b.ip6}]:{PORT}" and rb["from"] == f"[{a.ip6}]:{PORT}"


def test_wan_emulation_delays_ipv6_as_it_delays_ipv4(lab: Lab) -> None:
    client = lab.site("home", Nat.CONE, ipv6=True, wan=Wan(delay=0.020)).hosts[0]
    server = lab.public_host("server", wan=Wan(delay=0.010))
    _, ready = server.start_json(server.python(UDP_PROBE, "serve", str(PORT)), timeout=10)
    assert ready == {"ready": True}
    medians = []
    for target in (f"[{server.ip6}]:{PORT}", f"{server.ip}:{PORT}"):
        proc = client.run(client.python(UDP_PROBE, "probe", target, "20", "0.05", "2"),
                          timeout=60)
        assert proc.returncode == 0, proc.stderr
        rtts = sorted(json.loads(proc.stdout)["rtts_ms"])
        assert len(rtts) == 20 and rtts[0] >= 2 * (20 + 10) - 1, rtts
        medians.append(rtts[10])
    assert all(m <= 2 * (20 + 10) + 30 for m in medians), medians


# --- meshnat over the dual-stack lab ----------------------------------------------------------

def _dual_stack_mesh(lab: Lab, *, relay: bool = True) -> tuple[str, list[str]]:
    """A dual-stack public relay (also a reflector) and two more reflectors (without `relay`:
    only the two reflectors, and no relay address)."""
    address, reflectors = "", []
    if relay:
        host = lab.public_host("relay")
        _, ready = host.start_json(host.python("-m", "meshnat", "relay", "--ipv6", "--json"),
                                   timeout=30)
        address = next(a for a in ready["addrs"] if a.startswith("/ip4/") and "/tcp/" in a)
        reflectors = list(ready["addrs"])
    for i in range(2):
        refl = lab.public_host(f"refl{i}")
        _, up = refl.start_json(refl.python("-m", "meshnat", "reflector", "--ipv6", "--json"),
                                timeout=30)
        reflectors += up["addrs"]
    return address, reflectors


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ipv6_discovery_behind_a_symmetric_nat_finds_the_hosts_own_address(
        lab: Lab, transport: str) -> None:
    reflectors: list[str] = []
    for i in range(3):
        refl = lab.public_host(f"refl{i}")
        _, up = refl.start_json(refl.python("-m", "meshnat", "reflector", "--ipv6", "--json"),
                                timeout=30)
        reflectors += up["addrs"]
    inside = lab.site("home", Nat.SYMMETRIC, ipv6=True).hosts[0]
    args = ["-m", "meshnat", "discover", "--json", "--port", "5000", "--transport", transport]
    for addr in reflectors:
        args += ["--reflector", addr]
    v6 = inside.run(inside.python(*args, "--family", "6"), timeout=60)
    assert v6.returncode == 0, v6.stderr[-2000:]
    result = json.loads(v6.stdout)
    assert result["address"] == f"[{inside.ip6}]:5000" and result["behind_nat"] is False
    assert result["voters"] == 3  # three observer groups: each public host has its own /56
    v4 = inside.run(inside.python(*args), timeout=60)  # the IPv4 NAT is still symmetric
    if transport == "udp":
        assert v4.returncode == 1 and json.loads(v4.stdout)["error"] == "no-consensus"


def _mesh_args(relay: str, reflectors: list[str]) -> list[str]:
    args = ["--relay", relay, "--port", "4001", "--json"]
    for addr in reflectors:
        args += ["--reflector", addr]
    return args


def _listen(host: Host, args: list[str]) -> str:
    _, ready = host.start_json(host.python("-m", "meshnat", "listen", *args), timeout=60)
    assert ready["event"] == "ready", ready
    return str(ready["peer_id"])


def _connect(host: Host, peer: str, args: list[str]) -> dict:
    proc = host.run(host.python("-m", "meshnat", "connect", peer, "--wait-direct", "5", *args),
                    timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict = json.loads(proc.stdout.splitlines()[-1])
    assert result["echo_ok"] is True
    return result


def test_two_symmetric_nats_with_ipv6_get_a_punched_path_over_ipv6(lab: Lab) -> None:
    relay, reflectors = _dual_stack_mesh(lab)
    left = lab.site("left", Nat.SYMMETRIC, ipv6=True)
    right = lab.site("right", Nat.SYMMETRIC, ipv6=True)
    args = ["--ipv6", *_mesh_args(relay, reflectors)]
    peer = _listen(right.hosts[0], args)
    result = _connect(left.hosts[0], peer, args)
    print(json.dumps(result))
    assert result["path"] == "punched", result
    assert result["remote"] == f"[{right.hosts[0].ip6}]:4001", result  # its own v6 address
    assert result["relayed_rtt_ms"] > 0  # the relay circuit came first


def test_without_ipv6_the_same_pair_stays_on_the_relay(lab: Lab) -> None:
    relay, reflectors = _dual_stack_mesh(lab)
    left = lab.site("left", Nat.SYMMETRIC, ipv6=True)
    right = lab.site("right", Nat.SYMMETRIC, ipv6=True)
    args = _mesh_args(relay, reflectors)  # the nodes listen on IPv4 only
    peer = _listen(right.hosts[0], args)
    result = _connect(left.hosts[0], peer, args)
    assert result["path"] == "relayed", result
    assert "endpoint-dependent" in result["punch_error"]


def test_probe_classifies_each_family_an_ipv6_firewall_as_no_nat_with_filtering(
        lab: Lab) -> None:
    """`meshnat probe --ipv6`: the IPv4 report of a symmetric NAT at the top, the IPv6 one
    under "ipv6", measured through the reflectors' IPv6 addresses: no NAT, an
    endpoint-independent mapping (the host's own address, port kept), and the stateful
    firewall's address-and-port-dependent filtering (RFC 4787 §5)."""
    _, reflectors = _dual_stack_mesh(lab)
    inside = lab.site("home", Nat.SYMMETRIC, ipv6=True).hosts[0]
    args = ["-m", "meshnat", "probe", "--ipv6", "--json", "--port", "5000"]
    for addr in reflectors:
        args += ["--reflector", addr]
    proc = inside.run(inside.python(*args), timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert (report["ip_version"], report["nat_type"]) == (4, "symmetric"), report
    six = report["ipv6"]
    assert six["ip_version"] == 6 and six["udp_blocked"] is False, six
    assert six["behind_nat"] is False and six["local"] == f"[{inside.ip6}]:5000", six
    assert six["mapping"] == "endpoint-independent", six
    assert six["filtering"] == "address-and-port-dependent", six
    assert six["port_allocation"] == "preserved", six
    assert six["public_addrs"] == [f"[{inside.ip6}]:5000"], six
    assert six["hairpin"] is None  # no NAT: nothing to hairpin through
