"""An IPv6-only site: hosts with only a global IPv6 address behind the router's stateful
firewall, and NAT64 (TAYGA, tests/support/nat64.py) in the router for IPv4 destinations.
Plain sockets first (the site as built), then `meshnat` nodes on it: each path kind."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.lab.test_ipv6_lab import _dual_stack_mesh, _mesh_args
from tests.support import nat64
from tests.support.netlab import Host, Lab, Nat

_NO_TAYGA = shutil.which("tayga") is None and not os.access("/usr/sbin/tayga", os.X_OK)
pytestmark = [pytest.mark.lab, pytest.mark.skipif(
    _NO_TAYGA and not os.environ.get("CI"),  # in CI .ci/run installs it: never skipped there
    reason="the IPv6-only site's NAT64 needs tayga (Debian package tayga)")]

_UDP_ECHO_ONCE = """
import json, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7000)); s.settimeout(8)
print('{"ready": true}', flush=True)
data, addr = s.recvfrom(100); s.sendto(data, addr); print(json.dumps(addr[0]))
"""
_UDP_ASK = """
import errno, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(3)
try:
    s.sendto(b"hi", (sys.argv[1], 7000)); print(s.recvfrom(100)[0].decode())
except OSError as exc:
    print(errno.errorcode.get(exc.errno or 0, type(exc).__name__))
"""


def _echo_server(host: Host, bind: str) -> object:
    proc, ready = host.start_json(["python3", "-c", _UDP_ECHO_ONCE, bind], timeout=10)
    assert ready == {"ready": True}
    return proc


def _ask(host: Host, target: str) -> str:
    proc = host.run(["python3", "-c", _UDP_ASK, target], timeout=15)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_an_ipv6_only_host_has_no_ipv4_and_reaches_ipv4_through_nat64(lab: Lab) -> None:
    server = lab.public_host("server")
    site = lab.site("v6only", Nat.CONE, ipv6_only=True)
    inside = site.hosts[0]
    assert inside.ip6 is not None and inside.ip == inside.ip6 and site.nat64
    addrs = inside.run(["ip", "-4", "addr", "show", "dev", "eth0"], timeout=5).stdout
    assert "inet " not in addrs  # no IPv4 address at all
    assert _ask(inside, server.ip) == "ENETUNREACH"  # no IPv4 route at all
    echo = _echo_server(server, "0.0.0.0")
    assert _ask(inside, nat64.synthesize(server.ip)) == "hi"
    out, _ = echo.communicate(timeout=10)  # type: ignore[attr-defined]
    assert json.loads(out.splitlines()[-1]) == site.public_ip  # NAT64, then the IPv4 NAT
    # and IPv6 as on a dual-stack site: out and back through the stateful firewall
    echo6 = _echo_server(server, "::")
    assert _ask(inside, server.ip6 or "") == "hi"
    out6, _ = echo6.communicate(timeout=10)  # type: ignore[attr-defined]
    assert json.loads(out6.splitlines()[-1]) == inside.ip6


def test_nat64_lets_nothing_unsolicited_in(lab: Lab) -> None:
    """A packet from outside to the site's public IPv4 address (where NAT64's flows leave
    from) never reaches the IPv6-only host: NAT64 adds no way in."""
    server = lab.public_host("server")
    site = lab.site("v6only", Nat.CONE, ipv6_only=True)
    inside = site.hosts[0]
    echo = _echo_server(inside, "::")
    for target in (site.public_ip,):
        probe = server.run(["python3", "-c", f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(b"in", ("{target}", 7000))
try:
    s.recvfrom(100); print("answered")
except OSError:
    print("silent")
"""], timeout=10)
        assert probe.stdout.strip() == "silent", target
    echo.kill()  # type: ignore[attr-defined]


# --- meshnat on the IPv6-only site ------------------------------------------------------------

def _mesh(lab: Lab) -> tuple[str, str, list[str]]:
    """A dual-stack relay (also a reflector) and two dual-stack reflectors: the relay's IPv4
    and IPv6 TCP addresses, and every reflector address."""
    host = lab.public_host("relay")
    _, ready = host.start_json(host.python("-m", "meshnat", "relay", "--ipv6", "--json"),
                               timeout=30)
    addrs = [str(a) for a in ready["addrs"]]  # type: ignore[attr-defined]
    relay4 = next(a for a in addrs if a.startswith("/ip4/") and "/tcp/" in a)
    relay6 = next(a for a in addrs if a.startswith("/ip6/") and "/tcp/" in a)
    _, reflectors = _dual_stack_mesh(lab, relay=False)
    return relay4, relay6, addrs + reflectors


def _listen(host: Host, args: list[str]) -> str:
    _, ready = host.start_json(host.python("-m", "meshnat", "listen", *args), timeout=60)
    assert ready["event"] == "ready", ready
    return str(ready["peer_id"])


def _connect(host: Host, peer: str, args: list[str]) -> dict:
    proc = host.run(host.python("-m", "meshnat", "connect", peer, "--wait-direct", "5", *args),
                    timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict = json.loads(proc.stdout.splitlines()[-1])
    assert result["echo_ok"] is True, result
    return result


def test_an_ipv6_only_node_discovers_its_address_and_gets_each_path_kind(lab: Lab) -> None:
    """A node with only a global IPv6 address behind a stateful firewall (`--ipv6`; it has
    no IPv4 to use): discovery over IPv6 finds its own address and IPv4 finds nothing; a
    public dual-stack host reaches it directly; it reaches a dual-stack peer behind a
    symmetric NAT by a punch over IPv6; and an IPv4-only peer through the dual-stack relay
    (the IPv4-only peer has no address it could use; NAT64 is not dialled by the ladder)."""
    relay4, relay6, reflectors = _mesh(lab)
    inside, dialler = lab.site("v6only", Nat.CONE, hosts=2, ipv6_only=True).hosts
    ask = ["-m", "meshnat", "discover", "--json", "--port", "5000", "--transport", "udp"]
    for addr in reflectors:
        ask += ["--reflector", addr]
    v6 = inside.run(inside.python(*ask, "--family", "6"), timeout=60)
    assert v6.returncode == 0, v6.stderr[-2000:]
    found = json.loads(v6.stdout)
    assert found["address"] == f"[{inside.ip6}]:5000" and found["behind_nat"] is False, found
    v4 = inside.run(inside.python(*ask), timeout=60)
    assert v4.returncode == 1 and json.loads(v4.stdout)["error"] == "insufficient-responses"

    # reachable: a public dual-stack host gets a direct path to it, over IPv6
    ours = ["--ipv6", *_mesh_args(relay6, reflectors)]
    peer = _listen(inside, ours)
    public = lab.public_host("public")
    reached = _connect(public, peer, ["--ipv6", *_mesh_args(relay4, reflectors)])
    assert reached["path"] in ("direct", "punched"), reached
    assert reached["remote"] == f"[{inside.ip6}]:4001", reached

    # a dual-stack peer behind a symmetric NAT and a stateful IPv6 firewall: punched over IPv6
    dual = lab.site("dual", Nat.SYMMETRIC, ipv6=True).hosts[0]
    dual_peer = _listen(dual, ["--ipv6", *_mesh_args(relay4, reflectors)])
    punched = _connect(dialler, dual_peer, ours)  # the site's second host: 4001 is taken
    assert punched["path"] == "punched", punched
    assert punched["remote"] == f"[{dual.ip6}]:4001", punched

    # an IPv4-only peer (a cone NAT, no IPv6): through the relay, over IPv6 on our side
    old = lab.site("old", Nat.CONE).hosts[0]
    old_peer = _listen(old, _mesh_args(relay4, reflectors))
    relayed = _connect(dialler, old_peer, ours)
    assert relayed["path"] == "relayed" and relayed["relayed_rtt_ms"] > 0, relayed
    assert relayed["punch_error"], relayed  # tried, and said why it stayed relayed
