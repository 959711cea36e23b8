"""Time to direct over emulated WAN paths, against the RTT floor measured in the same run.

Needs root (network namespaces, the lab's NFQUEUE WAN emulator). For each setting (a round
trip time and a loss share) one lab is built: a public relay and two reflectors with plain
links, and for each NAT pair two sites whose uplinks each add RTT/4 each way (so site to site,
and site to relay to site, is RTT) with RTT/40 of jitter and the loss share on every crossing of
an uplink (a packet crosses two: about twice that end to end). One `meshnat listen` runs behind
the pair's second NAT; `meshnat connect` runs N times (one process each) from behind the first.
Each run reaches the listener over the relay circuit, punches, and echoes over the final path.

Printed per setting and pair: punched runs of N; time to direct (the relayed connection exists
-> the punched connection exists: `time_to_direct_ms`) and to the first echo byte over it,
median and p90; and the ratio of the median to the RTT floor 1.5 relay RTT + 1 direct RTT. The
relay's link is not emulated and all hosts share one bridge, so both RTTs are the network RTT
between the two hosts, measured in the same lab as kernel TCP handshakes from each host to a
public one (medians of 9). libp2p pings over both paths (a stream opened, then a ping) are
printed beside it.
The cone -> symmetric pair is birthday probing: its punched share is the success rate.

Run: sudo .venv/bin/python -m benchmarks.bench_time_to_direct_lab [--rtt 0 20 80]
     [--loss 0 2] [--pairs cone/cone cone/symmetric udp-blocked/cone] [-n 20] [--json]
     [--baseline OTHER_TREE/src]
With --baseline each pair also runs on a second pair of sites with the other tree's meshnat,
the two alternating run by run: before/after figures under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.lab.test_punch_lab import mesh_args, start_relay
from tests.support.netlab import Host, Lab, Nat, lab_available
from tests.support.wan import Wan

from benchmarks._stats import median_p, row
from benchmarks.bench_punch_lab import dcutr_baseline

KINDS = {"cone": Nat.CONE, "symmetric": Nat.SYMMETRIC, "udp-blocked": Nat.UDP_BLOCKED}
DEFAULT_PAIRS = ("cone/cone", "cone/symmetric", "udp-blocked/cone")
RTT_PORT = 7
RTT_SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 7), backlog=128)
print("{}", flush=True)
while True:
    s.accept()[0].close()
"""
RTT_CLIENT = """
import json, socket, statistics, sys, time
rtts = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    with socket.create_connection((sys.argv[1], 7), timeout=10):
        rtts.append((time.perf_counter() - started) * 1e3)
    time.sleep(0.05)
print(json.dumps(statistics.median(rtts)))
"""
WIDTHS = (8, 7, 29, 9, 16, 18, 10, 8, 11, 22)


@dataclass
class PairResult:
    """The runs of one NAT pair at one setting."""

    rtt_ms: float
    loss: float
    pair: str
    runs: int = 0
    punched: int = 0
    transports: dict[str, int] = field(default_factory=dict)
    direct_ms: list[float] = field(default_factory=list)
    first_byte_ms: list[float] = field(default_factory=list)
    relay_rtt_ms: list[float] = field(default_factory=list)
    """libp2p pings over the relay circuit (a stream opened, then one ping)."""
    direct_rtt_ms: list[float] = field(default_factory=list)
    """libp2p pings over the punched path."""
    network_rtt_ms: float | None = None
    """The network's RTT between the two hosts: TCP handshakes host -> relay from each."""
    failures: list[str] = field(default_factory=list)

    def floor_ms(self) -> float | None:
        """1.5 relay RTT + 1 direct RTT. The relay's link is not emulated and every host sits
        on one bridge, so both RTTs are the network RTT measured in this run."""
        return None if self.network_rtt_ms is None else 2.5 * self.network_rtt_ms

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k != "failures"}
        out["failures"] = self.failures[:5]
        floor = self.floor_ms()
        out["floor_ms"] = floor
        for name in ("direct_ms", "first_byte_ms"):
            samples = getattr(self, name)
            if samples:
                med, p90 = median_p(samples, 90)
                out[f"{name}_median"], out[f"{name}_p90"] = med, p90
                out[f"{name}_ratio_to_floor"] = med / floor if floor else None
        return out


def wan_for(rtt_ms: float, loss: float) -> Wan | None:
    """A site uplink's share of `rtt_ms` (a quarter each way: two uplinks, both directions)."""
    if rtt_ms == 0 and loss == 0:
        return None
    delay = rtt_ms / 4 / 1e3
    return Wan(delay=delay, jitter=delay / 10, loss=loss)


def network_rtt(hosts: tuple[Host, Host], server: Host) -> float:
    """Median TCP handshake time (kernel to kernel: no Python stack in it) from each of
    `hosts` to `server`, summed: the RTT host to host through the shared bridge, ms."""
    total = 0.0
    for host in hosts:
        proc = host.run(host.python("-c", RTT_CLIENT, server.ip, "9"), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"RTT probe from {host.ns} failed: {proc.stderr[-300:]}")
        total += float(proc.stdout)
    return total


@dataclass
class End:
    """One pair's two hosts running one source tree, and what its runs gave."""

    dialer: Host
    listener: Host
    src: str | None
    """The `src` directory the meshnat processes import (None: this interpreter's own)."""
    result: PairResult
    peer: str = ""

    def meshnat(self, host: Host, *args: str) -> list[str]:
        env = [] if self.src is None else ["env", f"PYTHONPATH={self.src}"]
        return [*env, *host.python("-m", "meshnat", *args)]


def start_listener(end: End, relay: str, reflectors: list[str]) -> None:
    host = end.listener
    _, ready = host.start_json(end.meshnat(host, "listen", *mesh_args(relay, reflectors)),
                               timeout=60)
    end.peer = str(ready["peer_id"])


def connect_once(end: End, relay: str, reflectors: list[str], wait_direct: float) -> None:
    """One `meshnat connect` from `end`'s dialer; its outcome goes into `end.result`."""
    result, host = end.result, end.dialer
    result.runs += 1
    try:
        proc = host.run(end.meshnat(host, "connect", end.peer, "--wait-direct",
                                    str(wait_direct), *mesh_args(relay, reflectors)),
                        timeout=wait_direct + 60)
    except subprocess.TimeoutExpired:
        result.failures.append("connect timed out")
        return
    if proc.returncode != 0 or not proc.stdout.strip():
        result.failures.append(f"exit {proc.returncode}: {proc.stderr[-300:]}")
        return
    out = json.loads(proc.stdout.splitlines()[-1])
    if out.get("relayed_rtt_ms") is not None:
        result.relay_rtt_ms.append(out["relayed_rtt_ms"])
    if out["path"] != "punched":
        result.failures.append(f"relayed: {out.get('punch_error')}")
        return
    result.punched += 1
    transport = str(out["transport"])
    result.transports[transport] = result.transports.get(transport, 0) + 1
    result.direct_ms.append(out["time_to_direct_ms"])
    result.first_byte_ms.append(out["time_to_direct_ms"] + out["rtt_ms"])
    if out.get("path_rtt_ms") is not None:
        result.direct_rtt_ms.append(out["path_rtt_ms"])


def run_setting(rtt_ms: float, loss: float, pairs: list[str], n: int, wait_direct: float,
                seed: int, baseline: str | None) -> list[PairResult]:
    """One lab for one (RTT, loss): every pair's runs in turn, then the lab is torn down.
    With a `baseline` tree each pair has a second pair of sites running it, and the runs of
    the two alternate (the same load on both)."""
    results = []
    trees: list[tuple[str, str | None]] = [("", None)]
    if baseline is not None:
        trees.append((" (baseline)", baseline))
    with Lab(wan_seed=seed) as lab:
        relay, reflectors = start_relay(lab)
        rtt_server = lab.public_host("rtt")
        rtt_server.start_json(rtt_server.python("-c", RTT_SERVER), timeout=30)
        wan = wan_for(rtt_ms, loss)
        for i, pair in enumerate(pairs):
            left, right = (KINDS[kind] for kind in pair.split("/"))
            ends = []
            for j, (label, src) in enumerate(trees):
                dialer = lab.site(f"p{i}{j}a", left, wan=wan).hosts[0]
                listener = lab.site(f"p{i}{j}b", right, wan=wan).hosts[0]
                result = PairResult(rtt_ms, loss, pair + label, network_rtt_ms=network_rtt(
                    (dialer, listener), rtt_server))
                ends.append(End(dialer, listener, src, result))
                start_listener(ends[-1], relay, reflectors)
            for _ in range(n):
                for end in ends:
                    connect_once(end, relay, reflectors, wait_direct)
            results += [end.result for end in ends]
    return results


def _med(samples: list[float]) -> str:
    return f"{median_p(samples, 50)[0]:.0f}" if samples else "-"


def _cells(r: PairResult) -> list[str]:
    """The table cells of one pair's times (median/p90, floor, ratios, pings)."""
    s = r.summary()
    floor = s["floor_ms"]
    times = [f"{s[f'{n}_median']:.0f}/{s[f'{n}_p90']:.0f}" if f"{n}_median" in s else "-"
             for n in ("direct_ms", "first_byte_ms")]
    ratios = [f"{v:.2f}" if (v := s.get(f"{n}_ratio_to_floor")) is not None else "-"
              for n in ("direct_ms", "first_byte_ms")]
    return [*times, f"{floor:.1f}" if floor is not None else "-", *ratios,
            f"{_med(r.relay_rtt_ms)}/{_med(r.direct_rtt_ms)}"]


def print_table(results: list[PairResult]) -> None:
    print(row("RTT ms", "loss", "pair", "punched", "direct med/p90", "1st byte med/p90",
              "floor ms", "ratio", "1st/floor", "pings ms relay/direct", widths=WIDTHS))
    for r in results:
        print(row(f"{r.rtt_ms:g}", f"{r.loss:.0%}", r.pair, f"{r.punched}/{r.runs}",
                  *_cells(r), widths=WIDTHS))
    for r in results:
        if r.pair.startswith("cone/symmetric"):
            print(f"birthday probing (cone -> symmetric) at {r.rtt_ms:g} ms, {r.loss:.0%} loss: "
                  f"{r.punched}/{r.runs} = {r.punched / max(r.runs, 1):.0%} (goal >= 95%)")
    for r in results:
        for reason, count in Counter(r.failures).most_common(2):
            print(f"  {r.rtt_ms:g} ms {r.loss:.0%} {r.pair}: {count}x {reason[:200]}")
    print("direct: relayed connection -> punched connection (the punch, from its coordination "
          "stream to the winning path); 1st byte: that plus the first echo over it; floor: "
          "1.5 x relay RTT + 1 x direct RTT, both the network RTT (TCP handshakes to a public "
          "host, same lab); pings: libp2p pings over the relayed and the punched path (stream "
          "open + ping, medians); loss: per uplink crossing, so about twice that end to end")


def print_dcutr(rtt: float, times: list[float], runs: int, results: list[PairResult]) -> None:
    """py-libp2p's DCUtR at `rtt` against meshnat's cone/cone first byte at `rtt`, no loss."""
    ours = [r for r in results if r.pair == "cone/cone" and r.rtt_ms == rtt and r.loss == 0]
    line = f"py-libp2p 0.8.1 DCUtR cone -> cone at {rtt:g} ms: {len(times)}/{runs}"
    if times:
        med, p90 = median_p(times, 90)
        line += f" direct, first byte median {med:.0f} ms, p90 {p90:.0f} ms"
        if ours and ours[0].first_byte_ms:
            mine = median_p(ours[0].first_byte_ms, 50)[0]
            line += f"; meshnat cone/cone {mine:.0f} ms, meshnat/DCUtR = {mine / med:.2f}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt", type=float, nargs="+", default=[0, 20, 80], metavar="MS")
    parser.add_argument("--loss", type=float, nargs="+", default=[0, 2], metavar="PERCENT")
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS),
                        choices=[f"{a}/{b}" for a in KINDS for b in KINDS])
    parser.add_argument("-n", type=int, default=20, help="connects per pair and setting")
    parser.add_argument("--wait-direct", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=1, help="the WAN emulator's seed")
    parser.add_argument("--json", action="store_true", help="one JSON object at the end")
    parser.add_argument("--dcutr", type=int, default=0, metavar="N",
                        help="also run py-libp2p 0.8.1's DCUtR cone -> cone N times per RTT "
                        "(its own lab, no loss), against cone/cone's first byte")
    parser.add_argument("--baseline", metavar="SRC", help="another tree's src directory (e.g. "
                        "a worktree of an older commit), run alternately with this one")
    args = parser.parse_args()
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    # SIGTERM unwinds like Ctrl-C, so every Lab tears its namespaces and processes down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, results = time.monotonic(), []
    for rtt in args.rtt:
        for loss in args.loss:
            setting = run_setting(rtt, loss / 100, args.pairs, args.n, args.wait_direct,
                                  args.seed, args.baseline)
            results += setting
            if not args.json:
                print_table(setting)
                sys.stdout.flush()
    dcutr = {rtt: dcutr_baseline(args.dcutr, wan_for(rtt, 0)) for rtt in args.rtt} \
        if args.dcutr else {}
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"results": [r.summary() for r in results], "load_average": load,
                          "dcutr_first_byte_ms": {str(k): v for k, v in dcutr.items()},
                          "seconds": time.monotonic() - started}))
    else:
        print("all settings:")
        print_table(results)
        for rtt, times in dcutr.items():
            print_dcutr(rtt, times, args.dcutr, results)
        print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end; "
              f"{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
