"""The dual-stack lab: IPv6 sites behind stateful firewalls (no NAT), checked with plain sockets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab

NAIVE_PUNCH = str(Path(__file__).with_name("naive_punch.py"))
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
