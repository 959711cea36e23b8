"""Connecting over real-looking paths: every pair of site kinds at 40 ms RTT and 1% loss per
site (the lab's WAN emulator), connected first over the relay, then direct where it can be."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.lab.test_discovery_lab import start_reflectors
from tests.lab.test_punch_lab import PORT, mesh_args
from tests.support.jsnode import read_json_line
from tests.support.netlab import Host, Lab, Nat
from tests.support.wan import Wan

pytestmark = pytest.mark.lab

# 10 ms each way on each uplink: 40 ms site to site; 1% lost on each crossing of an uplink
SITE_WAN = Wan(delay=0.010, jitter=0.001, loss=0.01)
KINDS = {"public": None, "cone": Nat.CONE, "symmetric": Nat.SYMMETRIC,
         "udp-blocked": Nat.UDP_BLOCKED, "port-forward": Nat.PORT_FORWARD}
PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))
NO_DIRECT_PATH = {("symmetric", "symmetric"), ("symmetric", "udp-blocked")}
BATCH = 5  # pairs connecting at once: the 2-core machine runs 4 meshnat processes per pair


def start_generous_relay(lab: Lab, *, ipv6: bool = False) -> tuple[str, list[str]]:
    """A relay that takes every lab site at once (they all share one /24) and 2 reflectors
    (all dual-stack with `ipv6`); the relay's IPv4 TCP address and every reflector address."""
    host = lab.public_host("relay")
    limits = [f"--max-{what}-per-network" for what in ("reservations", "circuits", "connections")]
    args = [arg for flag in limits for arg in (flag, "256")] + (["--ipv6"] if ipv6 else [])
    _, ready = host.start_json(host.python("-m", "meshnat", "relay", "--json", *args),
                               timeout=60)
    relay_tcp = next(a for a in ready["addrs"] if a.startswith("/ip4/") and "/tcp/" in a)
    return relay_tcp, [*ready["addrs"], *start_reflectors(lab, count=2, ipv6=ipv6)]


def wan_host(lab: Lab, name: str, kind: str, wan: Wan = SITE_WAN, *, ipv6: bool = False) -> Host:
    nat = KINDS[kind]
    if nat is None:
        return lab.public_host(name, wan=wan)  # always dual-stack
    return lab.site(name, nat, forwarded_port=PORT, wan=wan, ipv6=ipv6).hosts[0]


def connect_batch(lab: Lab, batch: list[tuple[int, str, str]], relay: str,
                  reflectors: list[str], wan: Wan = SITE_WAN, *, ipv6: bool = False,
                  ) -> dict[tuple[int, str, str], dict]:
    """Listen on the second kind of each pair, connect from the first, all pairs at once
    (with `ipv6`: dual-stack sites, and nodes listening on both families)."""
    ends = {n: (wan_host(lab, f"m{n}a", a, wan, ipv6=ipv6),
                wan_host(lab, f"m{n}b", b, wan, ipv6=ipv6)) for n, a, b in batch}
    args = [*mesh_args(relay, reflectors), *(["--ipv6"] if ipv6 else [])]
    listeners = {n: b.popen(b.python("-m", "meshnat", "listen", *args))
                 for n, (_, b) in ends.items()}
    peers = {n: str(read_json_line(proc, "meshnat listen", 120)["peer_id"])
             for n, proc in listeners.items()}
    dialers = {n: a.popen(a.python("-m", "meshnat", "connect", peers[n], "--wait-direct", "20",
                                   *args))
               for n, (a, _) in ends.items()}
    results = {}
    for n, kind_a, kind_b in batch:
        out, err = dialers[n].communicate(timeout=180)
        lines = out.splitlines()
        results[n, kind_a, kind_b] = (json.loads(lines[-1]) if dialers[n].returncode == 0 and lines
                                   else {"error": err[-2000:]})
        listeners[n].kill()
    return results


def run_matrix(lab: Lab, *, ipv6: bool) -> tuple[dict[tuple[str, str], dict], float]:
    """Every pair of site kinds, BATCH at a time: results by pair, and the seconds it took."""
    relay, reflectors = start_generous_relay(lab, ipv6=ipv6)
    numbered = [(n, a, b) for n, (a, b) in enumerate(PAIRS)]
    started = time.monotonic()
    results: dict[tuple[str, str], dict] = {}
    for i in range(0, len(numbered), BATCH):
        batch = connect_batch(lab, numbered[i:i + BATCH], relay, reflectors, ipv6=ipv6)
        results.update({(a, b): r for (_, a, b), r in batch.items()})
    return results, time.monotonic() - started


def test_every_pair_of_site_kinds_connects_at_40_ms_rtt_and_1_percent_loss(lab: Lab) -> None:
    results, elapsed = run_matrix(lab, ipv6=False)
    table = {f"{a}/{b}": (r.get("path"), r.get("transport"), r.get("rtt_ms"),
                          r.get("punch_error") or r.get("error")) for (a, b), r in results.items()}
    print(f"matrix of {len(PAIRS)} pairs in {elapsed:.0f} s:",
          *(f"{pair}: {json.dumps(row)}" for pair, row in table.items()), sep="\n  ")
    connected = [pair for pair, r in results.items() if r.get("echo_ok") is True]
    assert len(connected) == 15, table
    # every path, direct or through the relay, crosses two emulated uplinks each way
    assert all(r["rtt_ms"] >= 40 - 4 for r in results.values()), table
    direct = {pair for pair, r in results.items() if r.get("path") in ("direct", "punched")}
    assert direct == set(PAIRS) - NO_DIRECT_PATH, table


def test_cone_to_cone_still_ends_direct_at_5_percent_loss_per_site(lab: Lab) -> None:
    """No rung gives up on a lost packet: reflection, discovery, the relay, the punch's
    coordination, probes and QUIC handshake all cross two uplinks losing 5% each (about 10%
    end to end), three pairs at once."""
    relay, reflectors = start_generous_relay(lab)
    lossy = Wan(delay=0.010, jitter=0.001, loss=0.05)
    results = connect_batch(lab, [(n, "cone", "cone") for n in range(3)], relay, reflectors,
                            wan=lossy)
    table = {n: (r.get("path"), r.get("transport"), r.get("punch_error") or r.get("error"))
             for (n, _, _), r in results.items()}
    assert all(r.get("echo_ok") is True for r in results.values()), table
    assert all(r.get("path") == "punched" for r in results.values()), table


def test_with_ipv6_every_pair_of_site_kinds_ends_direct_symmetric_ones_too(lab: Lab) -> None:
    """The same matrix with every site dual-stack (IPv6 behind each router's stateful
    firewall) and every node listening on both families: the two pairs with no IPv4 path
    (symmetric/symmetric, symmetric/UDP-blocked) are punched over IPv6 as well."""
    results, elapsed = run_matrix(lab, ipv6=True)
    table = {f"{a}/{b}": (r.get("path"), r.get("transport"), r.get("remote"), r.get("rtt_ms"),
                          r.get("punch_error") or r.get("error")) for (a, b), r in results.items()}
    print(f"dual-stack matrix of {len(PAIRS)} pairs in {elapsed:.0f} s:",
          *(f"{pair}: {json.dumps(row)}" for pair, row in table.items()), sep="\n  ")
    assert all(r.get("echo_ok") is True for r in results.values()), table
    assert all(r["rtt_ms"] >= 40 - 4 for r in results.values()), table  # v6 is emulated too
    direct = {pair for pair, r in results.items() if r.get("path") in ("direct", "punched")}
    assert direct == set(PAIRS), table
    for pair in NO_DIRECT_PATH:  # only IPv6 could join these: their remote is an IPv6 one
        assert str(results[pair]["remote"]).startswith("[2001:db8:"), table
