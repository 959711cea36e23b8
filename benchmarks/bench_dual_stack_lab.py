"""Share of lab pairs that end direct with IPv6 off and on, over real-looking paths.

Needs root (network namespaces). The 15-pair matrix of tests/lab/test_real_paths_lab.py
(every pair of public, cone, symmetric, UDP-blocked, port-forward; 40 ms RTT and 1% loss per
site, IPv6 emulated as IPv4 is) runs twice in the same run: IPv4 only (the baseline), then
with every site dual-stack (IPv6 behind each router's stateful firewall) and every node
listening on both families (`--ipv6`). Printed per pair: the path, transport and family of
each run; then the direct share of each and the ratio, and the time to the first echo byte
over the final path (median of the pairs that ended direct).

Run: sudo .venv/bin/python -m benchmarks.bench_dual_stack_lab
"""

from __future__ import annotations

from tests.lab.test_real_paths_lab import PAIRS, run_matrix
from tests.support.netlab import Lab, lab_available

from benchmarks._stats import median_p, row

WIDTHS = (26, 22, 22)


def _cell(result: dict) -> str:
    if result.get("echo_ok") is not True:
        return "failed"
    family = "v6" if str(result.get("remote", "")).startswith("[") else "v4"
    path = result.get("path")
    return f"{path} {result.get('transport')} {family}" if path != "relayed" else "relayed"


def main() -> None:
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    runs = {}
    for ipv6 in (False, True):
        with Lab(f"mnbenchv6{int(ipv6)}") as lab:
            runs[ipv6] = run_matrix(lab, ipv6=ipv6)
    print(row("pair", "IPv4 only", "dual stack", widths=WIDTHS))
    for pair in PAIRS:
        print(row("/".join(pair), _cell(runs[False][0][pair]), _cell(runs[True][0][pair]),
                  widths=WIDTHS))
    shares = {}
    for ipv6, (results, elapsed) in runs.items():
        direct = [r for r in results.values() if r.get("path") in ("direct", "punched")]
        shares[ipv6] = len(direct) / len(PAIRS)
        times = [r["time_to_direct_ms"] + r["rtt_ms"] for r in direct
                 if r.get("time_to_direct_ms") is not None]
        median = f"{median_p(times, 50)[0]:.0f} ms" if times else "-"
        print(f"{'dual stack' if ipv6 else 'IPv4 only'}: {len(direct)}/{len(PAIRS)} direct "
              f"({shares[ipv6]:.0%}), time to direct + first echo median {median}, "
              f"matrix {elapsed:.0f} s")
    if shares[False]:
        print(f"direct share dual stack / IPv4 only = {shares[True] / shares[False]:.2f}")


if __name__ == "__main__":
    main()
