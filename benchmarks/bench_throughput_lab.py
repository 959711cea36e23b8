"""Throughput in the NAT lab: meshnat streams direct and relayed, against baselines of the run.

Needs root. Topology: a public relay host, a public listener host and a dialer behind a cone
NAT (its connections leave through the NAT's conntrack forward, the data path a punched TCP
connection takes); one process per role and namespace (benchmarks/throughput_node.py). Per
path, SIZE (50 MiB) one way (to a sink that answers the count) and both ways at once (an echo,
digest-checked), MB/s per direction:
- direct: meshnat TCP+Noise+Yamux, a plain TCP socket on the same path, py-libp2p 0.8.1 as
  shipped (its Noise and Yamux, in processes without meshnat);
- relayed: meshnat through meshnat's relay, a plain trio TCP forwarder on the relay host,
  py-libp2p 0.8.1 through its own relay as shipped (limits raised to let 50 MiB through);
- the meshnat relay's CPU seconds per GB carried (from /proc, over the relayed measurements)
  and its memory per open idle circuit (RSS growth while 6 dialers hold 8 each);
- 1,000 echoed transfers of mixed sizes (1 B .. 1 MiB, 16 at a time) per meshnat path, by digest.

Not here: tunnels (bench_tunnel, loopback), punched QUIC (quicfast's bench), memory per
reservation (bench_relay_memory).

Run: sudo .venv/bin/python -m benchmarks.bench_throughput_lab [--json]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.support.netlab import Host, Lab, Nat, lab_available

from benchmarks._stats import row

NODE = ["-m", "benchmarks.throughput_node"]
SIZE = 50 * 1024 * 1024
HOLDERS = 6
WIDTHS = (34, 10, 10, 12, 8)
TICKS = os.sysconf("SC_CLK_TCK")
GB = 1e9


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def dial(host: Host, *args: str) -> dict[str, object]:
    proc = host.run(host.python(*NODE, "dialer", *args), timeout=900)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"dialer {args} failed: {proc.stderr[-2000:]}")
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def circuit_memory(relay_pid: int, dialer: Host, peer: dict[str, object],
                   relay: dict[str, object]) -> float:
    """The meshnat relay's RSS growth per idle circuit while HOLDERS dialers (peer ids) each
    hold the circuits they opened."""
    before = rss_kib(relay_pid)
    holders, circuits = [], 0
    try:
        for _ in range(HOLDERS):
            holder, ready = dialer.start_json(dialer.python(
                *NODE, "dialer", "--path", "circuits", "--peer", str(peer["peer_id"]),
                "--relay", str(relay["addr"])), timeout=300)
            holders.append(holder)
            circuits += int(ready["circuits"])  # type: ignore[call-overload]
        after = rss_kib(relay_pid)
    finally:
        for holder in holders:
            holder.terminate()
            holder.wait(timeout=30)
    return (after - before) / circuits


def main() -> None:
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    results: dict[str, dict[str, object]] = {}
    with Lab("mnthru") as lab:
        relay_host, listener = lab.public_host("relay"), lab.public_host("listener")
        dialer = lab.site("a", Nat.CONE).hosts[0]
        relay, mesh_relay = relay_host.start_json(
            relay_host.python(*NODE, "relay", "--ip", relay_host.ip), timeout=60)
        _, stock_relay = relay_host.start_json(
            relay_host.python(*NODE, "relay", "--stock", "--ip", relay_host.ip), timeout=60)
        relay_host.start_json(relay_host.python(*NODE, "forwarder"), timeout=60)
        _, mesh_peer = listener.start_json(listener.python(
            *NODE, "listener", "--ip", listener.ip, "--relay", str(mesh_relay["addr"])),
            timeout=60)
        _, stock_peer = listener.start_json(listener.python(
            *NODE, "listener", "--stock", "--ip", listener.ip, "--relay",
            str(stock_relay["addr"])), timeout=60)
        plain = f"{listener.ip}:4200"
        results["plain"] = dial(dialer, "--path", "plain", "--target", plain)
        results["forwarder"] = dial(dialer, "--path", "forwarder", "--target", plain,
                                    "--forwarder", relay_host.ip)
        for name, peer, relay_info, stock in (
                ("meshnat", mesh_peer, mesh_relay, []), ("stock", stock_peer, stock_relay,
                                                         ["--stock"])):
            common = ["--peer", str(peer["peer_id"]), "--relay", str(relay_info["addr"]), *stock]
            results[f"{name} direct"] = dial(dialer, "--path", "direct",
                                             "--target", str(peer["addr"]), *common)
            before = cpu_seconds(relay.pid)
            results[f"{name} relayed"] = dial(dialer, "--path", "relayed", *common)
            if not stock:  # one way, both ways (2 x SIZE), the mixed echoes (both ways)
                mixed = results["meshnat relayed"]["mixed"]["bytes"]  # type: ignore[index]
                carried = 3 * SIZE + 2 * mixed
                results["relay"] = {"cpu_s_per_gb": (cpu_seconds(relay.pid) - before)
                                    / (carried / GB)}
        results["relay"]["kib_per_circuit"] = circuit_memory(relay.pid, dialer, mesh_peer,
                                                             mesh_relay)
    if "--json" in sys.argv:
        print(json.dumps(results))
        return
    report(results)


def report(r: dict[str, dict[str, object]]) -> None:
    def rate(name: str, key: str) -> float:
        return float(r[name][key])  # type: ignore[arg-type]

    print(row("50 MiB, MB/s per direction", "meshnat", "baseline", "", "ratio", widths=WIDTHS))
    for path, base, stock in (("direct", "plain", "stock direct"),
                              ("relayed", "forwarder", "stock relayed")):
        for key in ("one_way", "both_ways"):
            ours = rate(f"meshnat {path}", key)
            print(row(f"{path} {key.replace('_', ' ')} vs {base}", f"{ours:.1f}",
                      f"{rate(base, key):.1f}", "", f"{ours / rate(base, key):.3f}",
                      widths=WIDTHS))
            print(row(f"  vs py-libp2p 0.8.1 {path}", f"{ours:.1f}", f"{rate(stock, key):.1f}",
                      "", f"{ours / rate(stock, key):.2f}", widths=WIDTHS))
    print(f"meshnat relay: {rate('relay', 'cpu_s_per_gb'):.1f} CPU s per GB carried, "
          f"{rate('relay', 'kib_per_circuit'):.1f} KiB per open idle circuit")
    for path in ("direct", "relayed"):
        mixed = r[f"meshnat {path}"]["mixed"]
        print(f"mixed transfers, {path}: {mixed}")  # failed = transfers that lost or changed bytes
    print("direct: a TCP connection through the dialer's cone NAT to a public listener (the data "
          "path a punched TCP connection takes); plain: a trio TCP socket on the same path; "
          "forwarder: a plain trio forwarder on the relay host; stock: py-libp2p 0.8.1 as shipped")


if __name__ == "__main__":
    main()
