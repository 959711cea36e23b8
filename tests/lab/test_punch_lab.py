"""Connecting through real NATs: relayed first, then punched where the NATs allow it."""

from __future__ import annotations

import json
import subprocess

import pytest

from meshnat.punch.birthday import ANSWER_COPIES
from tests.lab.test_discovery_lab import start_reflectors
from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab

PORT = 4001


def start_relay(lab: Lab) -> tuple[str, list[str]]:
    """A public relay (also a reflector) and two more reflectors: (relay tcp addr, reflectors)."""
    host = lab.public_host("relay")
    _, ready = host.start_json(host.python("-m", "meshnat", "relay", "--json"), timeout=30)
    relay_tcp = next(a for a in ready["addrs"] if "/tcp/" in a)
    return relay_tcp, [*ready["addrs"], *start_reflectors(lab, count=2)]


def mesh_args(relay: str, reflectors: list[str]) -> list[str]:
    args = ["--relay", relay, "--port", str(PORT), "--json"]
    for addr in reflectors:
        args += ["--reflector", addr]
    return args


def listen(host: Host, relay: str, reflectors: list[str]) -> str:
    _, ready = host.start_json(
        host.python("-m", "meshnat", "listen", *mesh_args(relay, reflectors)), timeout=60)
    assert ready["event"] == "ready" and any("/p2p-circuit/" in a for a in ready["addrs"])
    return str(ready["peer_id"])


def connect(host: Host, peer: str, relay: str, reflectors: list[str]) -> dict:
    proc = host.run(host.python("-m", "meshnat", "connect", peer, "--wait-direct", "5",
                                *mesh_args(relay, reflectors)), timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict = json.loads(proc.stdout.splitlines()[-1])
    assert result["echo_ok"] is True
    return result


@pytest.mark.parametrize(("left", "right", "transports"), [
    # Both paths open between two cones and the race takes whichever lands first: which one
    # that is depends on the machine's load, so either is right (UDP alone is shown by the
    # cone/symmetric pairs below and by the traversal lab tests).
    (Nat.CONE, Nat.CONE, {"udp", "tcp"}),
    (Nat.UDP_BLOCKED, Nat.CONE, {"tcp"}),
])
def test_two_nats_that_allow_it_end_up_on_a_punched_path(
    lab: Lab, left: Nat, right: Nat, transports: set[str]
) -> None:
    relay, reflectors = start_relay(lab)
    a, b = lab.site("left", left), lab.site("right", right)
    peer = listen(b.hosts[0], relay, reflectors)
    for _ in range(2):  # a second run reuses the ports the first one punched and left
        result = connect(a.hosts[0], peer, relay, reflectors)
        assert result["path"] == "punched", result
        assert result["relayed_rtt_ms"] > 0  # the relay circuit came first and was pinged
        assert result["transport"] in transports
        assert result["remote"] == f"{b.public_ip}:{PORT}"  # the NAT kept the port
        assert result["time_to_direct_ms"] < 3000


@pytest.mark.parametrize("public_side", ["dialer", "listener"])
def test_a_public_peer_and_a_cone_peer_connect_directly(lab: Lab, public_side: str) -> None:
    relay, reflectors = start_relay(lab)
    public, home = lab.public_host("server"), lab.site("home", Nat.CONE).hosts[0]
    dialer, listener = (public, home) if public_side == "dialer" else (home, public)
    peer = listen(listener, relay, reflectors)
    result = connect(dialer, peer, relay, reflectors)
    assert result["path"] == "punched", result


def test_two_symmetric_nats_stay_on_the_relay_and_say_why_quickly(lab: Lab) -> None:
    relay, reflectors = start_relay(lab)
    a, b = lab.site("left", Nat.SYMMETRIC), lab.site("right", Nat.SYMMETRIC)
    peer = listen(b.hosts[0], relay, reflectors)
    result = connect(a.hosts[0], peer, relay, reflectors)
    assert result["path"] == "relayed", result
    assert "endpoint-dependent" in result["punch_error"]
    assert "time_to_direct_ms" not in result


def test_cone_and_symmetric_meet_by_birthday_probing_nearly_every_time(lab: Lab) -> None:
    relay, reflectors = start_relay(lab)
    easy, hard = lab.site("cone", Nat.CONE), lab.site("carrier", Nat.SYMMETRIC)
    peer = listen(hard.hosts[0], relay, reflectors)
    outcomes = [connect(easy.hosts[0], peer, relay, reflectors) for _ in range(20)]
    punched = [r for r in outcomes if r["path"] == "punched"]
    assert len(punched) >= 19, [r.get("punch_error") for r in outcomes]
    # the hard side answered from a fresh public port each time, never its listen port
    assert all(r["remote"].split(":")[0] == hard.public_ip for r in punched)
    assert all(r["punch"]["probes_sent"] <= 2048 + ANSWER_COPIES for r in punched)


def test_symmetric_dialer_reaches_a_cone_listener_by_birthday_probing(lab: Lab) -> None:
    relay, reflectors = start_relay(lab)
    easy, hard = lab.site("cone", Nat.CONE), lab.site("carrier", Nat.SYMMETRIC)
    peer = listen(easy.hosts[0], relay, reflectors)
    result = connect(hard.hosts[0], peer, relay, reflectors)
    assert result["path"] == "punched" and result["transport"] == "udp", result
    assert result["remote"] == f"{easy.public_ip}:{PORT}"
    # one per socket, and the answers (sent twice: one may be lost)
    assert result["punch"]["probes_sent"] == 256 + ANSWER_COPIES


def test_two_hosts_behind_one_nat_connect_over_their_lan(lab: Lab) -> None:
    relay, reflectors = start_relay(lab)
    flat = lab.site("flat", Nat.CONE, hosts=2)
    peer = listen(flat.hosts[1], relay, reflectors)
    result = connect(flat.hosts[0], peer, relay, reflectors)
    assert result["path"] == "punched", result
    # the NAT does not hairpin, so the path that works is the LAN one
    assert result["remote"] == f"{flat.hosts[1].ip}:{PORT}"


def test_a_punched_connection_keeps_working_after_the_relay_dies(lab: Lab) -> None:
    relay_host = lab.public_host("relay")
    relay_proc, ready = relay_host.start_json(
        relay_host.python("-m", "meshnat", "relay", "--json"), timeout=30)
    relay = next(a for a in ready["addrs"] if "/tcp/" in a)
    reflectors = [*ready["addrs"], *start_reflectors(lab, count=2)]
    a, b = lab.site("left", Nat.CONE), lab.site("right", Nat.CONE)
    peer = listen(b.hosts[0], relay, reflectors)
    host = a.hosts[0]
    proc = host.popen(host.python("-m", "meshnat", "connect", peer, "--hold",
                                  *mesh_args(relay, reflectors)), stdin=True)
    assert proc.stdout is not None and proc.stdin is not None
    first = json.loads(proc.stdout.readline())
    assert first["path"] == "punched" and first["echo_ok"], first
    relay_proc.kill()
    relay_proc.wait(timeout=10)
    proc.stdin.write("again\n")
    proc.stdin.flush()
    second = json.loads(proc.stdout.readline())
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert second["echo_ok"] is True and second["path"] == "direct", second


def test_a_listener_on_two_relays_stays_reachable_when_one_dies(lab: Lab) -> None:
    (first, first_addr), (_, second_addr) = [
        _relay_process(lab.public_host(name)) for name in ("relay1", "relay2")]
    a, b = lab.site("left", Nat.SYMMETRIC), lab.site("right", Nat.SYMMETRIC)
    args = ["--relay", first_addr, "--relay", second_addr, "--json"]
    listener = b.hosts[0]
    _, ready = listener.start_json(listener.python("-m", "meshnat", "listen", *args), timeout=60)
    circuits = [a for a in ready["addrs"] if "/p2p-circuit" in a]
    assert len(circuits) == 2, ready  # --keep-relays defaults to 2
    first.kill()
    first.wait(timeout=10)
    dialer = a.hosts[0]
    proc = dialer.run(dialer.python("-m", "meshnat", "connect", ready["peer_id"],
                                    "--wait-direct", "0", *args), timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["path"] == "relayed" and result["echo_ok"] is True, result


def _relay_process(host: Host) -> tuple[subprocess.Popen[str], str]:
    proc, ready = host.start_json(host.python("-m", "meshnat", "relay", "--json"), timeout=30)
    return proc, next(a for a in ready["addrs"] if "/tcp/" in a)


KINDS = {"public": None, "cone": Nat.CONE, "symmetric": Nat.SYMMETRIC,
         "udp-blocked": Nat.UDP_BLOCKED}
# expected final path per unordered pair (dialer listed first); relayed only where no punch can
MATRIX = [
    ("public", "public", "punched"), ("public", "cone", "punched"),
    ("public", "symmetric", "punched"), ("public", "udp-blocked", "punched"),
    ("cone", "udp-blocked", "punched"), ("symmetric", "udp-blocked", "relayed"),
    ("udp-blocked", "udp-blocked", "punched"), ("symmetric", "symmetric", "relayed"),
]


@pytest.mark.parametrize(("left", "right", "expected"), MATRIX)
def test_every_pair_of_sites_connects_on_the_best_path_it_can(
    lab: Lab, left: str, right: str, expected: str
) -> None:
    relay, reflectors = start_relay(lab)

    def host(name: str, kind: str) -> Host:
        nat = KINDS[kind]
        return lab.public_host(name) if nat is None else lab.site(name, nat).hosts[0]

    dialer, listener = host("a", left), host("b", right)
    peer = listen(listener, relay, reflectors)
    result = connect(dialer, peer, relay, reflectors)
    assert result["path"] == expected, result
