"""Explicit traversals through real NATs, driven step by step over a node's control socket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab.test_punch_lab import mesh_args, start_relay
from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab


def node_with_control(host: Host, relay: str, reflectors: list[str], control: Path) -> str:
    _, ready = host.start_json(host.python("-m", "meshnat", "listen", "--control", str(control),
                                           *mesh_args(relay, reflectors)), timeout=60)
    return str(ready["peer_id"])


def step(host: Host, control: Path, *args: str, ok: bool = True) -> dict:
    proc = host.run(host.python("-m", "meshnat", "traversal", *args, "--control", str(control),
                                "--json"), timeout=90)
    answer: dict = json.loads(proc.stdout.splitlines()[-1])
    assert answer["ok"] is ok and proc.returncode == (0 if ok else 1), (answer, proc.stderr)
    return answer


def udp_sockets_on(host: Host, port: int) -> list[str]:
    """`ss` lines of the UDP sockets bound to local `port` in this host."""
    proc = host.run(["ss", "-u", "-a", "-n"], timeout=10)
    return [line for line in proc.stdout.splitlines()[1:]
            if line.split()[3].rsplit(":", 1)[1] == str(port)]


def traversal_of(answer: dict, traversal_id: str) -> dict:
    return next(t for t in answer["traversals"] if t["traversal"] == traversal_id)


def test_a_pair_through_two_cone_nats_is_taken_and_carries_a_stream(lab: Lab,
                                                                    tmp_path: Path) -> None:
    relay, reflectors = start_relay(lab)
    left, right = lab.site("left", Nat.CONE), lab.site("right", Nat.CONE)
    control = tmp_path / "left.sock"
    peer = node_with_control(right.hosts[0], relay, reflectors, tmp_path / "right.sock")
    node_with_control(left.hosts[0], relay, reflectors, control)
    host = left.hosts[0]

    started = step(host, control, "new", peer)
    traversal, port = started["traversal"], started["local_port"]
    pairs = step(host, control, "pairs", "--wait", "10", "--state", "alive", "--ref", traversal)
    alive = [p for p in traversal_of(pairs, traversal)["pairs"] if p["state"] == "alive"]
    pair = next(p for p in alive if p["remote"].startswith(f"{right.public_ip}:"))
    assert pair["local"].startswith(f"{left.public_ip}:") and pair["rtt_ms"] is not None
    assert udp_sockets_on(host, port)  # the traversal's own socket, probing

    taken = step(host, control, "take", pair["id"], "--initiate")
    assert taken["pair"]["state"] == "taken" and taken["pair"]["deadline_s"] > 0
    after = traversal_of(step(host, control, "pairs"), traversal)
    assert after["probing"] is False  # keepalives stopped with the socket
    assert udp_sockets_on(host, port) == []  # the port is free for the transport
    refused = step(host, control, "take", pair["id"], "--initiate", ok=False)
    assert refused["error"] == "PairTaken"

    streamed = step(host, control, "stream", pair["id"])
    assert streamed["echo_ok"] is True and streamed["local_port"] == port
    (quic,) = udp_sockets_on(host, port)  # QUIC now runs from exactly that port...
    assert streamed["remote"] == pair["remote"]  # ...to the peer's end of the pair
    # py-libp2p's QUIC dials from a socket connected to the peer; meshnat's own (quic_stack
    # "meshnat") from the listener's socket, which stays unconnected
    assert quic.split()[4] in (pair["remote"], "*:*", "0.0.0.0:*")
    assert traversal_of(step(host, control, "pairs"), traversal)["keepalives_sent"] == \
        after["keepalives_sent"]


def test_a_taken_pair_not_used_in_time_is_reported_expired(lab: Lab, tmp_path: Path) -> None:
    relay, reflectors = start_relay(lab)
    left, right = lab.site("left", Nat.CONE), lab.site("right", Nat.CONE)
    control = tmp_path / "left.sock"
    peer = node_with_control(right.hosts[0], relay, reflectors, tmp_path / "right.sock")
    node_with_control(left.hosts[0], relay, reflectors, control)
    host = left.hosts[0]

    traversal = step(host, control, "new", peer)["traversal"]
    pairs = step(host, control, "pairs", "--wait", "10", "--state", "alive", "--ref", traversal)
    pair = next(p for p in traversal_of(pairs, traversal)["pairs"] if p["state"] == "alive")
    step(host, control, "take", pair["id"], "--initiate", "--deadline", "1")
    expired = step(host, control, "pairs", "--wait", "10", "--state", "expired",
                   "--ref", pair["id"])
    states = {p["id"]: p["state"] for p in traversal_of(expired, traversal)["pairs"]}
    assert states[pair["id"]] == "expired"
    assert step(host, control, "stream", pair["id"], ok=False)["error"] == "PairExpired"
