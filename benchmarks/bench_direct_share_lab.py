"""Share of lab pairs that end direct with router port mapping and IPv6 on, against off.

Needs root (network namespaces), Debian's miniupnpd-nftables. The 15-pair matrix of
tests/lab/test_real_paths_lab.py (public, cone, symmetric, UDP-blocked, port-forward; 40 ms
RTT and 1% loss per site) plus a sixth kind, `mapped`: a symmetric NAT whose router runs
miniupnpd (UPnP-IGD, NAT-PMP, PCP), listed last so that in every pair with it the mapped
site listens: 21 pairs. Two runs in the same invocation, each in a fresh lab:

- off: IPv4 only, no port mapping (the baseline);
- on: every site dual-stack (IPv6 behind each router's stateful firewall), every node
  `--ipv6`, and the mapped site's listener `--port-mapping` (its confirmed mapping passed to
  the dialler as `--mapped`: the ladder's first rung).

Printed per pair: path, transport and family in each run; then the direct share of each run
(direct, punched or mapped) and the ratio; the 15 pairs without the mapped site are also
counted apart. Then, in the "on" lab, the time to a usable mapping per protocol
(`bench_portmap_lab.time_to_mapping`: granted, and confirmed by a dial-back, against one UDP
discovery round of the same node). The load average is printed with the figures.

Run: sudo .venv/bin/python -m benchmarks.bench_direct_share_lab [--rounds N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

from tests.lab.test_punch_lab import PORT, mesh_args
from tests.lab.test_real_paths_lab import BATCH, KINDS, SITE_WAN, start_generous_relay
from tests.support.jsnode import read_json_line
from tests.support.netlab import Host, Lab, Nat, lab_available

from benchmarks import bench_portmap_lab
from benchmarks._stats import row

ALL_KINDS = [*KINDS, "mapped"]
PAIRS = list(itertools.combinations_with_replacement(ALL_KINDS, 2))
WIDTHS = (26, 22, 24)


def _host(lab: Lab, name: str, kind: str, *, on: bool) -> Host:
    if kind == "public":
        return lab.public_host(name, wan=SITE_WAN)  # always dual-stack
    if kind == "mapped":
        return lab.site(name, Nat.SYMMETRIC, wan=SITE_WAN, ipv6=on, port_mapping=True).hosts[0]
    nat = KINDS[kind]
    assert nat is not None
    return lab.site(name, nat, forwarded_port=PORT, wan=SITE_WAN, ipv6=on).hosts[0]


def _batch(lab: Lab, batch: list[tuple[int, str, str]], relay: str, reflectors: list[str], *,
           on: bool) -> dict[tuple[str, str], dict]:
    """Listen on the second kind of each pair, connect from the first, the batch at once."""
    ends = {n: (_host(lab, f"d{n}a", a, on=on), _host(lab, f"d{n}b", b, on=on))
            for n, a, b in batch}
    args = [*mesh_args(relay, reflectors), *(["--ipv6"] if on else [])]
    listeners = {}
    for n, _, kind in batch:
        mapping = ["--port-mapping"] if on and kind == "mapped" else []
        listeners[n] = ends[n][1].popen(ends[n][1].python("-m", "meshnat", "listen", *mapping,
                                                          *args))
    readies = {n: read_json_line(proc, "meshnat listen", 120) for n, proc in listeners.items()}
    dialers = {}
    for n, (a, _) in ends.items():
        mapped = [x for m in readies[n].get("mapped", []) or [] for x in ("--mapped", str(m))]
        dialers[n] = a.popen(a.python("-m", "meshnat", "connect", str(readies[n]["peer_id"]),
                                      "--wait-direct", "20", *mapped, *args))
    results = {}
    for n, kind_a, kind_b in batch:
        out, err = dialers[n].communicate(timeout=180)
        lines = out.splitlines()
        results[kind_a, kind_b] = (json.loads(lines[-1]) if dialers[n].returncode == 0 and lines
                                   else {"error": err[-2000:]})
        results[kind_a, kind_b]["mapped_offered"] = bool(readies[n].get("mapped"))
        listeners[n].kill()
    return results


def run(lab: Lab, *, on: bool) -> tuple[dict[tuple[str, str], dict], float, list[str]]:
    """The matrix: results by pair, the seconds it took, the reflectors it used."""
    relay, reflectors = start_generous_relay(lab, ipv6=on)
    numbered = [(n, a, b) for n, (a, b) in enumerate(PAIRS)]
    started = time.monotonic()
    results: dict[tuple[str, str], dict] = {}
    for i in range(0, len(numbered), BATCH):
        results.update(_batch(lab, numbered[i:i + BATCH], relay, reflectors, on=on))
    return results, time.monotonic() - started, reflectors


def _direct(result: dict) -> bool:
    return result.get("echo_ok") is True and result.get("path") in ("direct", "punched",
                                                                    "mapped")


def _cell(result: dict) -> str:
    if result.get("echo_ok") is not True:
        return "failed"
    family = "v6" if str(result.get("remote", "")).startswith("[") else "v4"
    path = result.get("path")
    return f"{path} {result.get('transport')} {family}" if path != "relayed" else "relayed"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=bench_portmap_lab.ROUNDS,
                        help="rounds per protocol of the time to a mapping (0: skip)")
    args = parser.parse_args()
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    runs = {}
    for on in (False, True):
        with Lab(f"mnbenchds{int(on)}") as lab:
            results, elapsed, reflectors = run(lab, on=on)
            runs[on] = results, elapsed
            if on and args.rounds:
                home = lab.site("home", Nat.SYMMETRIC, port_mapping=True)
                bench_portmap_lab.ROUNDS = args.rounds
                print(f"time to a usable mapping (load {os.getloadavg()[0]:.1f}):")
                bench_portmap_lab.time_to_mapping(lab, home.hosts[0], reflectors)
    print(row("pair", "off (IPv4, no mapping)", "on (IPv6 + mapping)", widths=WIDTHS))
    for pair in PAIRS:
        print(row("/".join(pair), _cell(runs[False][0][pair]), _cell(runs[True][0][pair]),
                  widths=WIDTHS))
    shares = {}
    for on, (results, elapsed) in runs.items():
        direct = [p for p, r in results.items() if _direct(r)]
        core = [p for p in direct if "mapped" not in p]
        shares[on] = len(direct) / len(PAIRS)
        print(f"{'on ' if on else 'off'}: {len(direct)}/{len(PAIRS)} direct ({shares[on]:.0%}); "
              f"without the mapped site {len(core)}/15; matrix {elapsed:.0f} s")
    if shares[False]:
        print(f"direct share on / off = {shares[True] / shares[False]:.2f} "
              f"(load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
