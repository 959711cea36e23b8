"""NAT binding lifetimes: punched paths behind routers that forget idle UDP bindings after
30 s, and routers whose whole NAT table is flushed mid-connection."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections import Counter

import pytest

from tests.lab.test_chat_lab import NETWORK, join
from tests.lab.test_punch_lab import listen, mesh_args, start_relay
from tests.support.jsnode import read_json_line
from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab

BINDING_TIMEOUT = 30  # seconds: a common home router's UDP timeout
LINE_RATE = 5.0  # chat lines a second the flush test sends at most (ChatConfig.rate is 10)


def hold(host: Host, peer: str, relay: str, reflectors: list[str]
         ) -> tuple[subprocess.Popen[str], dict]:
    """`meshnat connect --hold`: the process (one echo per stdin line) and its first line."""
    proc = host.popen(host.python("-m", "meshnat", "connect", peer, "--hold", "--wait-direct",
                                  "10", *mesh_args(relay, reflectors)), stdin=True)
    return proc, dict(read_json_line(proc, "meshnat connect", 90))


def echo(proc: subprocess.Popen[str], timeout: float = 60) -> dict:
    assert proc.stdin is not None
    proc.stdin.write("again\n")
    proc.stdin.flush()
    return dict(read_json_line(proc, "meshnat connect", timeout))


def test_a_punched_udp_path_survives_90_s_idle_behind_30_s_binding_timeouts(lab: Lab) -> None:
    relay, reflectors = start_relay(lab)
    # a symmetric dialer and a cone listener meet by birthday probing, always over UDP (QUIC),
    # where two cones may race to TCP, whose bindings the UDP timeouts do not touch
    hard = lab.site("carrier", Nat.SYMMETRIC, udp_timeout=BINDING_TIMEOUT)
    easy = lab.site("home", Nat.CONE, udp_timeout=BINDING_TIMEOUT)
    peer = listen(easy.hosts[0], relay, reflectors)
    proc, first = hold(hard.hosts[0], peer, relay, reflectors)
    assert (first["path"], first["transport"], first["echo_ok"]) == ("punched", "udp", True), first
    time.sleep(3 * BINDING_TIMEOUT)  # the idle time is what is under test, not a wait for work
    again = echo(proc)
    assert again["echo_ok"] is True and again["path"] == "direct", again


@pytest.mark.parametrize("flushed", [
    # the symmetric router maps the next packet to a fresh random port, which the cone side's
    # filter has never let in: the old path is gone for good; the keepalives find it dead, the
    # relay takes over (the flushed side reserves again) and a new punch makes it direct
    "symmetric",
    # the cone router keeps the port when the cone side sends again
    "cone",
])
def test_a_chat_is_direct_again_within_30_s_after_a_nat_table_flush(
        lab: Lab, flushed: str) -> None:
    rv_host = lab.public_host("rv")
    _, rv_ready = rv_host.start_json(
        rv_host.python("-m", "meshnat", "reflector", "--rendezvous", "--json"), timeout=30)
    rendezvous = next(a for a in rv_ready["addrs"] if "/tcp/" in a)
    relay, reflectors = start_relay(lab)
    hard, easy = lab.site("carrier", Nat.SYMMETRIC), lab.site("home", Nat.CONE)
    alice = join(hard.hosts[0], "alice", NETWORK, rendezvous, relay, reflectors)
    bob = join(easy.hosts[0], "bob", NETWORK, rendezvous, relay, reflectors)
    for me, other in ((alice, "bob"), (bob, "alice")):
        me.read_until(lambda ev, me=me, other=other: me.paths().get(other) == "punched",
                      timeout=90)
    lab.flush_nat(hard if flushed == "symmetric" else easy)
    flushed_at = time.monotonic()
    deadline = flushed_at + 30
    outcomes: list[tuple[float, str]] = []  # (seconds after the flush, path or "failed")
    # one line at a time, each waited for, at most LINE_RATE a second (under the receiver's
    # limit of 10 a second: a faster writer gets refusals, which are not what is measured
    # here; before lines were confirmed, refused lines were reported sent and lost, and a
    # refused first direct line failed this test); bounded by the deadline
    next_line = flushed_at
    for n in itertools.count():
        time.sleep(max(0.0, next_line - time.monotonic()))  # the pace, not a wait for work
        next_line = time.monotonic() + 1 / LINE_RATE
        text = f"after the flush {n}"
        alice.say(text)
        alice.read_until(lambda ev, text=text: any(
            e["event"] == "sent" and e.get("text") == text for e in ev),
            timeout=max(1.0, deadline - time.monotonic()))
        sent = next(e for e in alice.events if e.get("text") == text)
        paths = [d["path"] for d in sent.get("to", []) if d["name"] == "bob"]
        outcomes.append((time.monotonic() - flushed_at, paths[0] if paths else "failed"))
        if paths and paths[0] in ("direct", "punched"):
            bob.read_until(lambda ev, text=text: ("alice", text) in bob.heard(), timeout=30)
            heard = next(e for e in bob.events if e.get("text") == text)
            assert heard["path"] in ("direct", "punched"), heard
            failed = [t for t, path in outcomes if path == "failed"]
            relayed = [t for t, path in outcomes if path == "relayed"]
            print(f"flush on the {flushed} side: direct again after {outcomes[-1][0]:.1f} s; "
                  f"{len(failed)} lines failed (last at {max(failed, default=0):.1f} s), "
                  f"{len(relayed)} relayed (first at {min(relayed, default=0):.1f} s); why: "
                  f"{Counter(e['error'][:60] for e in alice.events if 'error' in e)}")
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not direct again 30 s after the flush: {alice.events[-8:]}")
