"""The lab itself: its NATs behave as their names say, checked with plain sockets."""

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


def _punch_pair(a: Host, a_public: str, b: Host, b_public: str) -> tuple[dict, dict]:
    """Run the naive punch on both hosts at once, each aiming at the other's public ip:PORT."""
    procs = [
        h.popen(h.python(NAIVE_PUNCH, "--bind", str(PORT), "--peer", f"{peer}:{PORT}",
                         "--timeout", "3"))
        for h, peer in ((a, b_public), (b, a_public))
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results[0], results[1]


def test_cone_nats_let_a_simultaneous_udp_punch_through(lab: Lab) -> None:
    left, right = lab.site("left", Nat.CONE), lab.site("right", Nat.CONE)
    a, b = left.hosts[0], right.hosts[0]
    ra, rb = _punch_pair(a, left.public_ip, b, right.public_ip)
    assert ra["received"] and rb["received"], (ra, rb)
    # each side saw the other's router, on the port it kept (masquerade preserves a free port)
    assert ra["from"] == f"{right.public_ip}:{PORT}"
    assert rb["from"] == f"{left.public_ip}:{PORT}"


def test_symmetric_nat_defeats_the_naive_punch(lab: Lab) -> None:
    left, right = lab.site("left", Nat.CONE), lab.site("right", Nat.SYMMETRIC)
    ra, rb = _punch_pair(left.hosts[0], left.public_ip, right.hosts[0], right.public_ip)
    assert not ra["received"] and not rb["received"], (ra, rb)


def test_cone_nat_drops_unsolicited_inbound(lab: Lab) -> None:
    site = lab.site("home", Nat.CONE)
    outsider = lab.public_host("outsider")
    # the inside host listens but never sends: nothing from outside may reach it
    listener = site.hosts[0].popen(site.hosts[0].python(
        NAIVE_PUNCH, "--bind", str(PORT), "--peer", "127.0.0.1:9", "--timeout", "2"))
    sender = outsider.run(outsider.python(
        NAIVE_PUNCH, "--bind", str(PORT), "--peer", f"{site.public_ip}:{PORT}",
        "--timeout", "2"), timeout=15)
    out, _ = listener.communicate(timeout=15)
    assert not json.loads(out)["received"]
    assert not json.loads(sender.stdout)["received"]


def test_public_hosts_reach_each_other_and_sites_have_no_way_out(lab: Lab) -> None:
    one, two = lab.public_host("one"), lab.public_host("two")
    r1, r2 = _punch_pair(one, one.ip, two, two.ip)
    assert r1["from"] == f"{two.ip}:{PORT}" and r2["from"] == f"{one.ip}:{PORT}"
    routes = subprocess.run(one.cmd(["ip", "route"]), capture_output=True, text=True, timeout=10)
    assert "default" not in routes.stdout  # the internet segment is closed: no route out


def test_udp_blocking_firewall_drops_udp_but_lets_tcp_out(lab: Lab) -> None:
    site = lab.site("office", Nat.UDP_BLOCKED)
    server = lab.public_host("server")
    inside = site.hosts[0]
    punch = _punch_pair(inside, site.public_ip, server, server.ip)
    assert not punch[0]["received"] and not punch[1]["received"]
    listener = _tcp_listener(server)
    connect = inside.run(["python3", "-c", _TCP_CONNECT, server.ip], timeout=15)
    out, _ = listener.communicate(timeout=15)
    assert connect.returncode == 0, connect.stderr
    assert out.strip() == site.public_ip  # the server saw the router's address: NAT on TCP


def test_port_forward_lets_an_outsider_in_on_the_forwarded_port_only(lab: Lab) -> None:
    site = lab.site("home", Nat.PORT_FORWARD, forwarded_port=PORT)
    outsider = lab.public_host("outsider")
    inside = site.hosts[0]
    # the inside host only listens (its peer is a dead end); the outsider sends to the router
    listener = inside.popen(inside.python(NAIVE_PUNCH, "--bind", str(PORT), "--peer",
                                          "127.0.0.1:9", "--timeout", "2"))
    outsider.run(outsider.python(NAIVE_PUNCH, "--bind", str(PORT), "--peer",
                                 f"{site.public_ip}:{PORT}", "--timeout", "1"), timeout=15)
    out, _ = listener.communicate(timeout=15)
    assert json.loads(out)["from"] == f"{outsider.ip}:{PORT}"


def test_double_nat_shows_the_outer_router_to_the_internet(lab: Lab) -> None:
    outer = lab.site("isp", Nat.CONE, hosts=0)
    inner = lab.site("home", Nat.CONE, behind=outer)
    server = lab.public_host("server")
    listener = _tcp_listener(server)
    connect = inner.hosts[0].run(["python3", "-c", _TCP_CONNECT, server.ip], timeout=15)
    out, _ = listener.communicate(timeout=15)
    assert connect.returncode == 0, connect.stderr
    assert out.strip() == outer.public_ip


def test_two_hosts_behind_one_nat_share_its_public_address(lab: Lab) -> None:
    site = lab.site("flat", Nat.CONE, hosts=2)
    server = lab.public_host("server")
    seen = []
    for host in site.hosts:
        listener = _tcp_listener(server)
        assert host.run(["python3", "-c", _TCP_CONNECT, server.ip], timeout=15).returncode == 0
        seen.append(listener.communicate(timeout=15)[0].strip())
    assert seen == [site.public_ip, site.public_ip]


@pytest.mark.parametrize("hairpin", [False, True])
def test_a_hairpinning_cgnat_turns_a_punch_between_its_homes_around(
        lab: Lab, hairpin: bool) -> None:
    cgnat = lab.site("isp", Nat.CONE, hosts=0, carrier=True, hairpin=hairpin)
    a, b = (lab.site(name, Nat.CONE, behind=cgnat).hosts[0] for name in ("home1", "home2"))
    server = lab.public_host("server")
    _, ready = server.start_json(server.python(UDP_PROBE, "whoami", "5000"), timeout=10)
    assert ready == {"ready": True}
    mapped = []
    for host in (a, b):  # each home's mapping of PORT at the CGNAT
        proc = host.run(host.python(UDP_PROBE, "ask", f"{server.ip}:5000", str(PORT)),
                        timeout=15)
        assert proc.returncode == 0, proc.stderr
        mapped.append(json.loads(proc.stdout)["mapped"])
    assert {m.split(":")[0] for m in mapped} == {cgnat.public_ip} and mapped[0] != mapped[1]
    procs = [host.popen(host.python(NAIVE_PUNCH, "--bind", str(PORT), "--peer", peer,
                                    "--timeout", "3"))
             for host, peer in ((a, mapped[1]), (b, mapped[0]))]
    heard = [json.loads(proc.communicate(timeout=15)[0])["from"] for proc in procs]
    # with hairpin each hears the other from its mapping, as a peer outside would
    assert heard == ([mapped[1], mapped[0]] if hairpin else [None, None])


_TCP_ACCEPT_ONCE = """
import socket
s = socket.create_server(("0.0.0.0", 7000)); s.settimeout(10)
print('{"ready": true}', flush=True)
conn, addr = s.accept(); print(addr[0]); conn.close()
"""
_TCP_CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], 7000), timeout=5).close()
"""


def _tcp_listener(host: Host) -> subprocess.Popen[str]:
    """A one-shot TCP server on port 7000 that prints the source IP it accepted."""
    proc, ready = host.start_json(["python3", "-c", _TCP_ACCEPT_ONCE], timeout=10)
    assert ready == {"ready": True}
    return proc


# --- WAN emulation ----------------------------------------------------------------------------

def _probe(lab: Lab, left: Wan | None, right: Wan | None, *, count: int, interval: float,
           kill_emulator: bool = False) -> dict:
    """Echo `count` probes from a CONE site (`left`) to a PORT_FORWARD site (`right`)."""
    client = lab.site("left", Nat.CONE, wan=left).hosts[0]
    server_site = lab.site("right", Nat.PORT_FORWARD, forwarded_port=PORT, wan=right)
    server = server_site.hosts[0]
    _, ready = server.start_json(server.python(UDP_PROBE, "serve", str(PORT)), timeout=10)
    assert ready == {"ready": True}
    if kill_emulator:
        assert lab.wan is not None
        lab.wan.kill()
    proc = client.run(client.python(UDP_PROBE, "probe", f"{server_site.public_ip}:{PORT}",
                                    str(count), str(interval), "3"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    result: dict = json.loads(proc.stdout)
    assert result["sent"] == count
    return result


def test_wan_delay_adds_up_over_both_uplinks_and_both_directions(lab: Lab) -> None:
    left, right = Wan(delay=0.020, jitter=0.002), Wan(delay=0.010)
    result = _probe(lab, left, right, count=40, interval=0.1)
    rtts = sorted(result["rtts_ms"])
    assert len(rtts) == 40  # no loss configured, none seen
    floor = 2 * (20 + 10) - 2 * 2  # the jitter is +-2 ms on each of left's two pipes
    assert rtts[0] >= floor, rtts  # the emulator only ever holds a packet, never hurries it
    assert 2 * (20 + 10) - 1 <= rtts[len(rtts) // 2] <= 2 * (20 + 10) + 30, rtts


def test_wan_jitter_never_reorders_a_burst(lab: Lab) -> None:
    result = _probe(lab, Wan(delay=0.010, jitter=0.010), None, count=300, interval=0.0005)
    assert len(result["order"]) == 300
    assert result["order"] == sorted(result["order"])  # release times never go backwards


def test_wan_loss_drops_its_share_on_each_crossing(lab: Lab) -> None:
    # 5% on each of left's two pipes: a probe and its echo both survive with p = 0.95^2
    result = _probe(lab, Wan(delay=0.002, loss=0.05), None, count=2000, interval=0.001)
    lost = 1 - len(result["rtts_ms"]) / 2000
    expected, sd = 1 - 0.95**2, (0.0975 * 0.9025 / 2000) ** 0.5
    assert abs(lost - expected) < 6 * sd, lost  # a band of 6 sd: a false alarm < 1e-8


def test_wan_fails_closed_when_the_emulator_dies(lab: Lab) -> None:
    result = _probe(lab, Wan(delay=0.005), None, count=20, interval=0.05, kill_emulator=True)
    assert result["rtts_ms"] == []
