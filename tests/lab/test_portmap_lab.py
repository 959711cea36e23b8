"""Router port mapping through a real miniupnpd (UPnP-IGD, NAT-PMP, PCP) in front of a
symmetric NAT: the node behind it is reached directly, on its mapping, from every kind of
site; without the mapper it is relayed as before."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.lab.test_punch_lab import mesh_args, start_relay
from tests.support.netlab import MAPPING_PREFIX, Host, Lab, Nat

pytestmark = [pytest.mark.lab, pytest.mark.skipif(
    shutil.which("miniupnpd") is None and not os.environ.get("CI"),
    reason="the port-mapping lab needs miniupnpd (Debian miniupnpd-nftables; CI installs it)")]


def listen(host: Host, relay: str, reflectors: list[str], *flags: str) -> dict:
    _, ready = host.start_json(host.python("-m", "meshnat", "listen", *flags,
                                           *mesh_args(relay, reflectors)), timeout=90)
    assert ready.get("event") == "ready", ready
    return ready


def read_json_until(proc: subprocess.Popen[str], done: Callable[[list[dict]], bool],
                    timeout: float) -> list[dict]:
    """The JSON lines `proc` prints next, until `done(lines)`; fail after `timeout` seconds.
    Reads the pipe's descriptor itself: a buffered readline() may hold lines select() misses."""
    assert proc.stdout is not None
    fd, pending, lines = proc.stdout.fileno(), b"", []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not done(lines):
            if b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                lines.append(json.loads(line))
                continue
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), f"not seen in {timeout}s: {lines}"
            data = os.read(fd, 65536)
            assert data, "the process exited"
            pending += data
    return lines


def connect(host: Host, ready: dict, relay: str, reflectors: list[str]) -> dict:
    mapped = [arg for addr in ready["mapped"] for arg in ("--mapped", addr)]
    proc = host.run(host.python("-m", "meshnat", "connect", ready["peer_id"], "--wait-direct",
                                "0", *mapped, *mesh_args(relay, reflectors)), timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict = json.loads(proc.stdout.splitlines()[-1])
    assert result["echo_ok"] is True
    return result


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp", "upnp"])
def test_a_node_behind_a_mapping_symmetric_nat_is_reached_directly_from_every_site(
        lab: Lab, protocol: str) -> None:
    relay, reflectors = start_relay(lab)
    home = lab.site("home", Nat.SYMMETRIC, port_mapping=True)
    ready = listen(home.hosts[0], relay, reflectors, "--port-mapping",
                   "--port-mapping-protocol", protocol)
    mapped = next(a for a in ready["mapped"] if "/udp/" in a)  # confirmed by a dial-back
    assert mapped.startswith(f"/ip4/{home.public_ip}/udp/") and "/quic-v1/p2p/" in mapped
    assert home.public_ip.startswith(MAPPING_PREFIX)
    others = [lab.site("cone", Nat.CONE).hosts[0]]
    if protocol == "pcp":  # one protocol is enough to check every kind of site
        others += [lab.public_host("public"), lab.site("sym", Nat.SYMMETRIC).hosts[0]]
    for host in others:
        result = connect(host, ready, relay, reflectors)
        assert result["path"] == "mapped", result
        assert result["remote"].startswith(f"{home.public_ip}:")


def test_without_the_mapper_the_node_behind_the_same_router_stays_relayed(lab: Lab) -> None:
    relay, reflectors = start_relay(lab)
    home = lab.site("home", Nat.SYMMETRIC, port_mapping=True)
    ready = listen(home.hosts[0], relay, reflectors)
    assert ready["mapped"] == []
    result = connect(lab.site("cone", Nat.CONE).hosts[0], ready, relay, reflectors)
    assert result["path"] == "relayed", result


def test_after_a_router_reboot_the_mapping_is_made_again_and_reaches_the_node(lab: Lab) -> None:
    relay, reflectors = start_relay(lab)
    home = lab.site("home", Nat.SYMMETRIC, port_mapping=True)
    proc, ready = home.hosts[0].start_json(home.hosts[0].python(
        "-m", "meshnat", "listen", "--port-mapping", "--port-mapping-protocol", "pcp",
        *mesh_args(relay, reflectors)), timeout=90)
    assert ready["mapped"]
    lab.reboot_port_mapping(home)  # mappings gone, new epoch, an unsolicited ANNOUNCE
    changes = read_json_until(proc, lambda seen: any(
        c["change"] == "obtained" and c.get("transport") == "udp" for c in seen), timeout=30)
    # `ready` waits for the UDP mapping only: the TCP one may be obtained after it, and its
    # event come first (stop 23's CI: changes[0] was a TCP `obtained`, which has no reason)
    udp = [c for c in changes if c.get("transport") == "udp"]
    assert [c["change"] for c in udp] == ["lost", "obtained"], changes
    assert udp[0]["reason"] == "gateway-rebooted", changes
    result = connect(lab.site("cone", Nat.CONE).hosts[0], ready, relay, reflectors)
    assert result["path"] == "mapped", result
