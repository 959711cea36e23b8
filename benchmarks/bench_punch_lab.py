"""Hole punching in the lab: time from punch() to the first byte over the direct path,
against py-libp2p 0.8.1's own DCUtR in the same lab and run.

Needs root (network namespaces). Per NAT pair, `meshnat connect` runs ROUNDS times against a
`meshnat listen` peer behind the other NAT; each run reaches the peer over a relay circuit,
punches, and echoes over the final path. Printed: median and p90 of punch-to-first-byte
(time to the direct connection plus the first echo over it), probes sent by the dialer, and the
ratio to the same run's relayed baseline (circuit dial plus first echo through the relay).
Then py-libp2p's DCUtR as shipped (benchmarks/dcutr_node.py, TCP: its QUIC cannot punch) runs
cone -> cone ROUNDS times in its own lab, and the meshnat/py-libp2p ratio is printed.

Run: sudo .venv/bin/python -m benchmarks.bench_punch_lab
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.lab.test_punch_lab import listen, mesh_args, start_relay
from tests.support.netlab import Lab, Nat, lab_available
from tests.support.wan import Wan

from benchmarks._stats import median_p, row

ROUNDS = 10
DCUTR_NODE = str(Path(__file__).with_name("dcutr_node.py"))
WIDTHS = (24, 12, 10, 10, 10, 12, 10)
PAIRS = [(Nat.CONE, Nat.CONE), (Nat.CONE, Nat.SYMMETRIC), (Nat.SYMMETRIC, Nat.CONE),
         (Nat.UDP_BLOCKED, Nat.CONE), (None, Nat.CONE)]


def dcutr_baseline(rounds: int = ROUNDS, wan: Wan | None = None) -> list[float]:
    """py-libp2p's DCUtR, cone -> cone (`wan` on both sites' uplinks): the relayed connection
    to the first echo byte over the direct one (initiate_hole_punch() and one echo), ms."""
    times = []
    with Lab("mnbenchdcutr") as lab:
        relay = lab.public_host("relay")
        _, ready = relay.start_json(relay.python(DCUTR_NODE, "relay", "--ip", relay.ip),
                                    timeout=30)
        dialer = lab.site("a", Nat.CONE, wan=wan).hosts[0]
        listener = lab.site("b", Nat.CONE, wan=wan).hosts[0]
        _, peer = listener.start_json(listener.python(DCUTR_NODE, "listener", "--relay",
                                                      str(ready["addr"])), timeout=30)
        for _ in range(rounds):
            proc = dialer.run(dialer.python(DCUTR_NODE, "dialer", "--relay", str(ready["addr"]),
                                            "--peer", str(peer["peer_id"])), timeout=90)
            if proc.returncode != 0 or not proc.stdout.strip():
                continue  # a failed round: not direct
            result = json.loads(proc.stdout.splitlines()[-1])
            if result["direct"] and result["echo_ok"]:
                times.append(result["first_byte_ms"])
    return times


def main() -> None:
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    cone_cone: list[float] = []
    print(row("dialer -> listener", "direct", "median ms", "p90 ms", "probes", "relayed ms",
              "ratio", widths=WIDTHS))
    failures: list[str] = []
    for n, (left, right) in enumerate(PAIRS):
        with Lab(f"mnbench{n}") as lab:
            relay, reflectors = start_relay(lab)
            dialer = lab.public_host("pub") if left is None else lab.site("a", left).hosts[0]
            listener = lab.site("b", right).hosts[0]
            peer = listen(listener, relay, reflectors)
            direct, relayed, probes = [], [], []
            for _ in range(ROUNDS):
                for wait, sink in ((5, direct), (0, relayed)):
                    proc = dialer.run(dialer.python(
                        "-m", "meshnat", "connect", peer, "--wait-direct", str(wait),
                        *mesh_args(relay, reflectors)), timeout=90)
                    if proc.returncode != 0 or not proc.stdout.strip():
                        failures.append(f"{left or 'public'} -> {right}: exit "
                                        f"{proc.returncode}: {proc.stderr[-600:]}")
                        continue
                    result = json.loads(proc.stdout.splitlines()[-1])
                    if wait == 0:
                        sink.append(result["time_to_path_ms"] + result["rtt_ms"])
                    elif result["path"] == "punched":
                        sink.append(result["time_to_direct_ms"] + result["rtt_ms"])
                        probes.append(result["punch"]["probes_sent"])
            name = f"{left or 'public'} -> {right}"
            if not direct:
                print(row(name, f"0/{ROUNDS}", "-", "-", "-", "-", "-", widths=WIDTHS))
                continue
            med, p90 = median_p(direct, 90)
            base = median_p(relayed, 50)[0]
            if (left, right) == (Nat.CONE, Nat.CONE):
                cone_cone = direct
            print(row(name, f"{len(direct)}/{ROUNDS}", f"{med:.1f}", f"{p90:.1f}",
                      f"{median_p([float(p) for p in probes], 50)[0]:.0f}", f"{base:.1f}",
                      f"{med / base:.2f}", widths=WIDTHS))
    for failure in failures:  # a connect that printed no result is a failed run, not a crash
        print("failed run:", failure)
    baseline = dcutr_baseline()
    if baseline and cone_cone:
        ours, theirs = median_p(cone_cone, 50)[0], median_p(baseline, 50)[0]
        print(f"py-libp2p 0.8.1 DCUtR, cone -> cone, TCP: {len(baseline)}/{ROUNDS} direct, "
              f"median {theirs:.1f} ms, p90 {median_p(baseline, 90)[1]:.1f} ms; "
              f"meshnat/py-libp2p = {ours / theirs:.2f}")
    else:
        print(f"py-libp2p 0.8.1 DCUtR, cone -> cone: {len(baseline)}/{ROUNDS} direct")
    print("direct: punch() to the first echo byte over the punched path; relayed: circuit dial "
          "to the first echo byte through the relay (same lab, same run); probes: UDP probes "
          "the dialer sent (birthday pairs: 256 sockets on the hard side, <= 2048 probes on "
          "the easy side)")


if __name__ == "__main__":
    main()
