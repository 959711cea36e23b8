"""NAT classification in the lab: time to a full report and packets sent, per router kind.

Needs root (network namespaces). For each router kind, `meshnat probe` runs ROUNDS times from a
host behind it against three public reflectors; the figure is the classifier's own elapsed
time (median, p90) and the packets the host sent (nftables counters in its namespace). The
baseline is one UDP discovery (`meshnat discover`) from the same host in the same run.

Run: sudo .venv/bin/python -m benchmarks.bench_classify_lab
"""

from __future__ import annotations

import json
import subprocess

from tests.lab.test_discovery_lab import start_reflectors
from tests.support.netlab import Host, Lab, Nat, lab_available

from benchmarks._stats import median_p, row

ROUNDS = 10
WIDTHS = (14, 22, 11, 9, 9, 12)
COUNT_RULES = """
table inet count {
  chain out {
    type filter hook output priority 0;
    meta l4proto udp counter
    meta l4proto tcp counter
  }
}
"""


def packets_sent(host: Host) -> int:
    out = subprocess.run(host.cmd(["nft", "-j", "list", "table", "inet", "count"]),
                         capture_output=True, text=True, timeout=10).stdout
    rules = [i["rule"] for i in json.loads(out)["nftables"] if "rule" in i]
    return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)


def run_json(host: Host, args: list[str]) -> dict:
    proc = host.run(host.python("-m", "meshnat", *args, "--json"), timeout=60)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    with Lab() as lab:
        reflectors = start_reflectors(lab)
        refl_args = [x for a in reflectors for x in ("--reflector", a)]
        kinds = {"cone": lab.site("cone", Nat.CONE).hosts[0],
                 "symmetric": lab.site("sym", Nat.SYMMETRIC).hosts[0],
                 "udp-blocked": lab.site("blk", Nat.UDP_BLOCKED).hosts[0],
                 "port-forward": lab.site("fwd", Nat.PORT_FORWARD).hosts[0],
                 "public": lab.public_host("pub")}
        print(row("router kind", "verdict", "median ms", "p90 ms", "packets", "vs 1 query",
                  widths=WIDTHS))
        for kind, host in kinds.items():
            subprocess.run(host.cmd(["nft", "-f", "-"]), input=COUNT_RULES, text=True,
                           check=True, timeout=10)
            times, packets, verdicts, queries = [], [], set(), []
            for _ in range(ROUNDS):
                before = packets_sent(host)
                report = run_json(host, ["probe", "--port", "4001", *refl_args])
                packets.append(packets_sent(host) - before)
                times.append(report["elapsed_ms"])
                verdicts.add(report["nat_type"])
                mapping = [e for e in report["evidence"] if e["test"] == "mapping"]
                queries += [mapping[0]["elapsed_ms"]] if mapping else []
            median, p90 = median_p(times, 90)
            query = median_p(queries, 50)[0] if queries else float("nan")
            print(row(kind, "/".join(sorted(verdicts)), f"{median:.1f}", f"{p90:.1f}",
                      f"{sorted(packets)[len(packets) // 2]}", f"{median / query:.0f}x",
                      widths=WIDTHS))
        print("packets: UDP+TCP packets the probing host sent per run (median), libp2p "
              "connection setup included; 'vs 1 query': median run time over the median time of "
              "one reflection query (udp-blocked: no query answered)")


if __name__ == "__main__":
    main()
