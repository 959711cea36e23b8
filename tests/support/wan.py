"""WAN emulation for the NAT lab: delay, jitter and loss on a site's uplink, both directions.

The kernel has no `netem`, so the lab queues bridged IPv4 and IPv6 packets of each emulated
uplink to userspace (iptables and ip6tables NFQUEUE, one queue, in the `inet` namespace,
matched with `physdev` on the bridge port)
and this module's process holds each one and gives its verdict later. The routers' NAT rules and
conntrack never see the emulator.

Model: an uplink is two FIFO pipes, up (site -> internet) and down (internet -> site). A packet
crosses the pipe of the port it came in on, then the pipe of the port it leaves on (either may be
an unemulated port, which adds nothing). Each pipe adds `delay` plus a uniform jitter in
[-jitter, +jitter], drops the packet with probability `loss`, and never releases a packet before
the one it took earlier (release times never go backwards, so a pipe does not reorder). Host to
host RTT across two emulated sites is 2 * (delay_a + delay_b).

Fail-closed: the rules have no `--queue-bypass`, so with the emulator dead every emulated packet
is dropped. The emulator exits when its standard input closes.

Run as a script (`python wan.py QUEUE SEED`) inside the bridge namespace; it reads one JSON line
per uplink on stdin, `{"ifindex", "delay", "jitter", "loss"}`, and answers each with `ok`.
`WanEmulator` is the lab's handle on that process and its rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import os
import random
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

QUEUE_NUM = 7
CHAIN = "WAN"
TABLES = ("iptables", "ip6tables")
"""Both families' FORWARD hooks feed the one queue (`bridge-nf-call-ip6tables=1` as well)."""


@dataclass(frozen=True, kw_only=True)
class Wan:
    """What a site's uplink adds to each packet, in each direction (seconds, share)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.jitter <= self.delay or not 0 <= self.loss < 1:
            raise ValueError(f"bad WAN parameters: {self}")


@dataclass
class _Pipe:
    wan: Wan
    rng: random.Random
    last_release: float = float("-inf")

    def cross(self, now: float) -> float | None:
        """The time a packet entering at `now` leaves this pipe, or None if it is lost."""
        if self.rng.random() < self.wan.loss:
            return None
        jitter = self.rng.uniform(-self.wan.jitter, self.wan.jitter) if self.wan.jitter else 0.0
        self.last_release = max(now + self.wan.delay + jitter, self.last_release)
        return self.last_release


@dataclass
class WanSchedule:
    """The pure core: the pipes of every emulated uplink, keyed by bridge-port ifindex."""

    seed: int
    _up: dict[int, _Pipe] = field(default_factory=dict)
    _down: dict[int, _Pipe] = field(default_factory=dict)

    def add_uplink(self, ifindex: int, wan: Wan) -> None:
        self._up[ifindex] = _Pipe(wan, random.Random(f"{self.seed}/{ifindex}/up"))
        self._down[ifindex] = _Pipe(wan, random.Random(f"{self.seed}/{ifindex}/down"))

    def release_time(self, in_port: int, out_port: int, now: float) -> float | None:
        """When a packet bridged from `in_port` to `out_port` at `now` is let go (None: lost)."""
        t: float | None = now
        for pipe in (self._up.get(in_port), self._down.get(out_port)):
            if pipe is not None and t is not None:
                t = pipe.cross(t)
        return t


def _serve(queue_num: int, seed: int) -> None:
    """The emulator process: queue `queue_num`, commands on stdin, verdicts when due."""
    from netfilterqueue import COPY_META, NetfilterQueue, Packet

    schedule = WanSchedule(seed)
    held: list[tuple[float, int, Packet]] = []
    counter = iter(range(1 << 62))

    def on_packet(pkt: Packet) -> None:
        release = schedule.release_time(pkt.physindev, pkt.physoutdev, time.monotonic())
        if release is None:
            pkt.drop()
        else:
            heapq.heappush(held, (release, next(counter), pkt))

    nfq = NetfilterQueue()
    nfq.bind(queue_num, on_packet, max_len=16384, mode=COPY_META)
    nfq_fd, stdin_fd, pending = nfq.get_fd(), sys.stdin.fileno(), b""
    print("ready", flush=True)
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([nfq_fd, stdin_fd], [], [], timeout)
        if nfq_fd in readable:
            nfq.run(block=False)
        if stdin_fd in readable:
            data = os.read(stdin_fd, 65536)
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                spec = json.loads(line)
                schedule.add_uplink(int(spec.pop("ifindex")), Wan(**spec))
                print("ok", flush=True)
        now = time.monotonic()
        while held and held[0][0] <= now:
            heapq.heappop(held)[2].accept()


class WanEmulator:
    """One emulator process in the bridge namespace `ns`, and the NFQUEUE rules feeding it."""

    def __init__(self, ns: str, seed: int) -> None:
        self.ns = ns
        for key, value in (("bridge-nf-call-iptables", 1), ("bridge-nf-call-ip6tables", 1),
                           ("bridge-nf-call-arptables", 0)):
            _ns_run(ns, "sysctl", "-q", "-w", f"net.bridge.{key}={value}")
        for tables in TABLES:
            _ns_run(ns, tables, "-N", CHAIN)
            _ns_run(ns, tables, "-A", "FORWARD", "-j", CHAIN)
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u", __file__, str(QUEUE_NUM),
             str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self._expect("ready")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _expect(self, word: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != word:
            self.close()
            raise RuntimeError(f"WAN emulator said {line!r}, not {word!r}")

    def add_uplink(self, port: str, wan: Wan) -> None:
        """Emulate `wan` on bridge port `port` (both directions), then queue its packets."""
        assert self.proc is not None and self.proc.stdin is not None
        (link,) = json.loads(_ns_run(self.ns, "ip", "-j", "link", "show", "dev", port))
        spec: dict[str, Any] = {"ifindex": link["ifindex"], **dataclasses.asdict(wan)}
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        self._expect("ok")
        for tables in TABLES:  # IPv4 and IPv6 alike, into the one queue
            for direction in ("--physdev-in", "--physdev-out"):  # the first match queues once
                _ns_run(self.ns, tables, "-A", CHAIN, "-m", "physdev", direction, port,
                        "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM))

    def kill(self) -> None:
        """Kill the emulator process (by pid); its rules stay, so emulated traffic stops."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def close(self) -> None:
        """Kill the process and remove the rules."""
        self.kill()
        for tables in TABLES:
            for args in (("-D", "FORWARD", "-j", CHAIN), ("-F", CHAIN), ("-X", CHAIN)):
                subprocess.run(["ip", "netns", "exec", self.ns, tables, *args],
                               capture_output=True, timeout=30)


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill `proc` (by pid) unless it has exited, reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _ns_run(ns: str, *args: str) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} in {ns} failed: {proc.stderr.strip()}")
    return proc.stdout


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
