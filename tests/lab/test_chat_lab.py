"""`meshnat chat` through real NATs: members find each other by network name, talk over direct
or punched paths, and keep talking after the rendezvous point and the relay are gone."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from tests.lab.test_discovery_lab import start_reflectors
from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab

PORT = 4001
NETWORK = "lab-net"


@dataclass
class Member:
    """One `meshnat chat` process and every JSON event it printed so far."""

    name: str
    proc: subprocess.Popen[str]
    events: list[dict[str, object]] = field(default_factory=list)
    pending: bytes = b""

    def read_until(self, done: object, timeout: float) -> None:
        """Collect events until `done(events)` holds; fail after `timeout` seconds.

        Reads the pipe's file descriptor directly: a buffered readline() can pull several
        lines out of the pipe at once, and select() then waits for data already read.
        """
        assert callable(done)
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not done(self.events):
                if b"\n" in self.pending:
                    line, self.pending = self.pending.split(b"\n", 1)
                    self.events.append(json.loads(line))
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"{self.name}: condition not met in {timeout}s; "
                                       f"events: {self.events}")
                data = os.read(fd, 65536)
                if not data:
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise RuntimeError(f"{self.name} exited: {err[-3000:]}")
                self.pending += data

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def paths(self) -> dict[str, str]:
        """Name -> the member's latest path to that peer."""
        out: dict[str, str] = {}
        for e in self.events:
            if e["event"] in ("peer-connected", "path-upgraded"):
                out[str(e["name"])] = str(e["path"])
        return out

    def heard(self) -> set[tuple[str, str]]:
        return {(str(e["name"]), str(e["text"])) for e in self.events if e["event"] == "message"}


def join(host: Host, name: str, network: str, rendezvous: str, relay: str,
         reflectors: list[str]) -> Member:
    args = ["-m", "meshnat", "chat", network, "--rendezvous", rendezvous, "--relay", relay,
            "--name", name, "--port", str(PORT), "--json"]
    for addr in reflectors:
        args += ["--reflector", addr]
    member = Member(name, host.popen(host.python(*args), stdin=True))
    member.read_until(lambda ev: any(e["event"] == "joined" for e in ev), timeout=60)
    return member


def _all_direct(members: list[Member]) -> None:
    for m in members:
        others = {o.name for o in members} - {m.name}
        m.read_until(lambda ev, m=m, others=others: all(
            m.paths().get(o) in ("direct", "punched") for o in others), timeout=60)


def test_three_members_behind_different_nats_chat_on_without_rendezvous_or_relay(
        lab: Lab) -> None:
    rv_host = lab.public_host("rv")
    rv_proc, rv_ready = rv_host.start_json(
        rv_host.python("-m", "meshnat", "reflector", "--rendezvous", "--json"), timeout=30)
    rendezvous = next(a for a in rv_ready["addrs"] if "/tcp/" in a)  # type: ignore[union-attr]
    relay_host = lab.public_host("relay")
    relay_proc, relay_ready = relay_host.start_json(
        relay_host.python("-m", "meshnat", "relay", "--json"), timeout=30)
    relay = next(a for a in relay_ready["addrs"] if "/tcp/" in a)  # type: ignore[union-attr]
    reflectors = [*rv_ready["addrs"], *relay_ready["addrs"],  # type: ignore[misc]
                  *start_reflectors(lab, count=1)]

    hosts = {"alice": lab.site("home", Nat.CONE).hosts[0],
             "bob": lab.site("office", Nat.UDP_BLOCKED).hosts[0],
             "carol": lab.public_host("carol")}
    members = [join(host, name, NETWORK, rendezvous, relay, reflectors)
               for name, host in hosts.items()]
    outsider = join(lab.public_host("dave"), "dave", "other-net", rendezvous, relay, reflectors)

    # every pair ends up on a path that needs neither the rendezvous nor the relay
    try:
        _all_direct(members)
    except TimeoutError:
        for m in members:
            m.proc.kill()
            print(m.name, m.events, (m.proc.stderr.read() if m.proc.stderr else "")[-6000:])
        raise
    for m in members:
        others = {o.name for o in members} - {m.name}
        m.read_until(lambda ev, m=m, others=others: all(
            m.paths().get(o) in ("direct", "punched") for o in others), timeout=90)

    def everyone_hears(round_: str) -> None:
        for m in members:
            m.say(f"{round_} from {m.name}")
        for m in members:
            expected = {(o.name, f"{round_} from {o.name}") for o in members if o is not m}
            m.read_until(lambda ev, m=m, expected=expected: expected <= m.heard(), timeout=30)
            relayed = [e for e in m.events if e["event"] == "message" and
                       e["path"] == "relayed" and str(e["text"]).startswith(round_)]
            assert not relayed, relayed

    everyone_hears("hello")
    rv_proc.kill()
    relay_proc.kill()
    rv_proc.wait(timeout=10)
    relay_proc.wait(timeout=10)
    everyone_hears("still here")

    # the member of another network found nobody, and nobody found it
    outsider.proc.terminate()
    outsider.read_until(lambda ev: any(e["event"] == "left" for e in ev), timeout=30)
    assert [e["event"] for e in outsider.events] == ["joined", "left"], outsider.events
    for m in members:
        assert "dave" not in m.paths()

    # a member that leaves says so, and the others see it go
    members[2].proc.terminate()
    for m in members[:2]:
        m.read_until(lambda ev: any(e["event"] == "peer-left" and e["name"] == "carol"
                                    for e in ev), timeout=30)
    assert members[2].proc.wait(timeout=30) == 0
