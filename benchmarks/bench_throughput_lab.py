"""Throughput in the NAT lab: meshnat streams and tunnels direct, relayed and punched, against
baselines of the run.

Needs root. Topology: a public relay host, a public listener host, a dialer behind a cone NAT
(its connections leave through the NAT's conntrack forward, the data path a punched TCP
connection takes), and a second listener behind another cone NAT (cone/cone: the dialer
punches to it); one process per role and namespace (benchmarks/throughput_node.py). Per path,
SIZE (50 MiB) one way (to a sink that answers the count) and both ways at once (an echo,
digest-checked), MB/s per direction, over a bare stream and through a tunnel (`forward` ->
tunnel -> `expose` of the listener's plain TCP server):
- direct: meshnat TCP+Noise+Yamux, a plain TCP socket on the same path, py-libp2p 0.8.1 as
  shipped (its Noise and Yamux, in processes without meshnat);
- relayed: meshnat through meshnat's relay, a plain trio TCP forwarder on the relay host,
  py-libp2p 0.8.1 through its own relay as shipped (limits raised to let 50 MiB through);
- punched (cone/cone): the relayed circuit to the NATed listener, then the connection
  `HolePuncher.punch` opened (QUIC), against a raw qh3 connection driven by a minimal trio loop
  (`bench_quic`'s driver, one way) and a plain TCP socket on the same path (both NATs: the
  listener's router forwards the two baseline ports to it, the punch's port is not forwarded);
- the meshnat relay's CPU seconds per GB carried (from /proc, over the relayed measurements)
  and its memory per open idle circuit (RSS growth while 6 dialers hold 8 each);
- 1,000 echoed transfers of mixed sizes (1 B .. 1 MiB, 16 at a time) per meshnat path and
  kind (bare stream, tunnel), by digest: the transfers that lost or changed a byte.

Not here: memory per reservation (bench_relay_memory).

Run: sudo .venv/bin/python -m benchmarks.bench_throughput_lab [--json] [--punched-only]
[--no-gro] [--socket-buffer BYTES]: --punched-only measures the punched path and its relayed
cone/cone circuit only; --no-gro turns UDP receive coalescing off in the nodes (the baseline of
that change); --socket-buffer sets the nodes' QUIC socket buffers (212992: a stock Linux's cap).
Each measurement also gives the dialer's CPU seconds per MiB, the punched path's and its
relayed circuit's the listener's (the `expose` end of a tunnel) and the meshnat relay's too
(the relay carries ~0 of the punched path's), and --punched-only the UDP receive-buffer drops
(RcvbufErrors) in the two ends' namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.lab.test_discovery_lab import start_reflectors
from tests.support.netlab import Host, Lab, Nat, Site, lab_available, remove_stale_namespaces

from benchmarks._stats import row
from benchmarks.throughput_node import NO_GRO, PROFILE, SOCKET_BUFFER, cpu_seconds

NODE = ["-m", "benchmarks.throughput_node"]
PREFIX = "mnthru"
"""Namespace names: PREFIX, the run's pid, then the lab's own."""
SIZE = 50 * 1024 * 1024
HOLDERS = 6
WIDTHS = (40, 10, 10, 12, 8)
RAW_QUIC_PORT = 4300
FORWARDED = (4200, RAW_QUIC_PORT)
"""The baselines' ports the punched listener's router forwards to it (TCP and UDP)."""
GB = 1e9
CPU_OF = ("dialer", "listener", "relay")
"""The processes whose CPU per MiB --punched-only reports (the listener: the `expose` end)."""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def udp_drops(host: Host) -> int:
    """UDP datagrams the kernel dropped in `host`'s namespace for a full receive buffer
    (/proc/net/snmp Udp: RcvbufErrors; the namespace's own counters)."""
    lines = [line.split() for line in host.run(["cat", "/proc/net/snmp"], timeout=30)
             .stdout.splitlines() if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def dial(host: Host, *args: str) -> dict[str, object]:
    proc = host.run(host.python(*NODE, "dialer", *args), timeout=900)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"dialer {args} failed: {proc.stderr[-2000:]}")
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def forward_baseline_ports(site: Site) -> None:
    """Let the plain TCP and raw QUIC baselines reach the site's first host through its NAT
    (DNAT of FORWARDED on the WAN side); every other port, the punch's included, stays a
    port-restricted cone."""
    host = site.hosts[0]
    ports = ", ".join(map(str, FORWARDED))
    for rule in (
            "add chain ip nat prerouting { type nat hook prerouting priority dstnat; "
            "policy accept; }",
            f'add rule ip nat prerouting iifname "wan" meta l4proto {{ tcp, udp }} '
            f"th dport {{ {ports} }} dnat to {host.ip}",
            "insert rule inet fw forward_filter ct status dnat accept"):
        proc = site.router.run(["nft", rule], timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nft {rule}: {proc.stderr}")


def raw_quic(dialer: Host, listener: Host, target: str) -> dict[str, object]:
    """One SIZE transfer over a raw qh3 connection from `dialer` to `target` (the listener's
    raw server, through its router)."""
    server = listener.popen(listener.python("-m", "benchmarks.bench_quic", "--serve", "raw",
                                            f"0.0.0.0:{RAW_QUIC_PORT}"))
    try:
        assert server.stdout is not None
        server.stdout.readline()  # bound
        proc = dialer.run(dialer.python("-m", "benchmarks.bench_quic", "--send", "raw", target,
                                        str(SIZE)), timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"raw qh3 failed: {proc.stderr[-2000:]}")
        result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
        return result
    finally:
        server.kill()
        server.wait(timeout=30)


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


def punched_path(lab: Lab, dialer: Host, mesh_relay: dict[str, object], relay_pid: int,
                 into: dict[str, dict[str, object]] | None = None) -> dict[str, object]:
    """Cone/cone: the dialer punches to a listener behind a second cone NAT; given `into`,
    the raw qh3 and plain TCP baselines on that path first (into it). The dialer also reports
    the listener's and the relay's (`relay_pid`) CPU per MiB."""
    site = lab.site("b", Nat.CONE)
    natted = site.hosts[0]
    forward_baseline_ports(site)
    reflectors = start_reflectors(lab, count=3)
    marks = [arg for addr in reflectors for arg in ("--reflector", addr)]
    listener, punch_peer = natted.start_json(natted.python(
        *NODE, "listener", "--relay", str(mesh_relay["addr"]), *marks), timeout=120)
    if into is not None:
        into["raw qh3"] = raw_quic(dialer, natted, f"{site.public_ip}:{RAW_QUIC_PORT}")
        into["plain cone/cone"] = dial(dialer, "--path", "plain",
                                       "--target", f"{site.public_ip}:4200")
    before = udp_drops(dialer), udp_drops(natted)
    result = dial(dialer, "--path", "punched", "--peer", str(punch_peer["peer_id"]),
                  "--relay", str(mesh_relay["addr"]), *marks, "--watch",
                  f"listener={listener.pid}", "--watch", f"relay={relay_pid}")
    result["udp_rcvbuf_errors"] = {"dialer": udp_drops(dialer) - before[0],
                                   "listener": udp_drops(natted) - before[1]}
    return result


def main() -> None:
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    # SIGTERM unwinds like Ctrl-C, so the Lab tears its namespaces and processes down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, dict[str, object]] = {}
    punched_only = "--punched-only" in sys.argv
    if "--no-gro" in sys.argv:  # the nodes read one datagram per call (inherited by them)
        os.environ[NO_GRO] = "1"
    if "--socket-buffer" in sys.argv:  # the nodes' QUIC socket buffers (inherited by them)
        os.environ[SOCKET_BUFFER] = sys.argv[sys.argv.index("--socket-buffer") + 1]
    # namespaces named by this run's pid: runs side by side do not collide, and one that
    # died (SIGKILL) is swept by the next by its dead pid
    remove_stale_namespaces(PREFIX)
    with Lab(f"{PREFIX}{os.getpid()}") as lab:
        relay_host, listener = lab.public_host("relay"), lab.public_host("listener")
        dialer = lab.site("a", Nat.CONE).hosts[0]
        relay, mesh_relay = relay_host.start_json(
            relay_host.python(*NODE, "relay", "--ip", relay_host.ip), timeout=60)
        _, stock_relay = relay_host.start_json(
            relay_host.python(*NODE, "relay", "--stock", "--ip", relay_host.ip), timeout=60)
        if punched_only:
            results["meshnat punched"] = punched_path(lab, dialer, mesh_relay, relay.pid)
            if PROFILE in os.environ:  # the long-running nodes write their profiles on SIGINT
                for proc in lab.processes:
                    proc.send_signal(signal.SIGINT)
                for proc in lab.processes:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=30)
            report_punched(results["meshnat punched"])
            return
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
            if not stock:  # one way, both ways (2 x SIZE), the mixed echoes (both ways),
                # over a bare stream and through a tunnel
                ours = results["meshnat relayed"]
                mixed = ours["mixed"]["bytes"] + ours["tunnel"]["mixed"]["bytes"]  # type: ignore[index]
                carried = 6 * SIZE + 2 * mixed
                results["relay"] = {"cpu_s_per_gb": (cpu_seconds(relay.pid) - before)
                                    / (carried / GB)}
        results["relay"]["kib_per_circuit"] = circuit_memory(relay.pid, dialer, mesh_peer,
                                                             mesh_relay)
        results["meshnat punched"] = punched_path(lab, dialer, mesh_relay, relay.pid, results)
    if "--json" in sys.argv:
        print(json.dumps(results))
        return
    report(results)


def report_punched(punch: dict[str, object]) -> None:
    """--punched-only: the punched path against the relayed cone/cone circuit of the run."""
    relayed, punched = punch["relayed"], punch["punched"]
    assert isinstance(relayed, dict) and isinstance(punched, dict)
    print(row("50 MiB, MB/s per direction", "punched", "relayed", "", "ratio", widths=WIDTHS))
    for key in ("one_way", "both_ways"):
        for label, ours, base in (("stream", punched, relayed),
                                  ("tunnel", punched["tunnel"], relayed["tunnel"])):
            print(row(f"{label} {key.replace('_', ' ')}", f"{float(ours[key]):.1f}",
                      f"{float(base[key]):.1f}", "", f"{float(ours[key]) / float(base[key]):.3f}",
                      widths=WIDTHS))
    for process in CPU_OF:
        suffix = "" if process == "dialer" else f"_{process}"
        print(row(f"{process} CPU s per MiB", "punched", "relayed", "", "ratio",
                  widths=WIDTHS))
        for key in ("one_way", "both_ways"):
            for label, ours, base in (("stream", punched, relayed),
                                      ("tunnel", punched["tunnel"], relayed["tunnel"])):
                mine, theirs = (float(x.get(f"{key}_cpu_s_per_mib{suffix}", "nan"))
                                for x in (ours, base))
                print(row(f"{label} {key.replace('_', ' ')}", f"{mine:.4f}", f"{theirs:.4f}",
                          "", f"{mine / theirs:.3f}" if theirs else "-", widths=WIDTHS))
    print(f"UDP receive-buffer drops during the run (RcvbufErrors): "
          f"{punch.get('udp_rcvbuf_errors')}")
    for name, result in (("relayed", relayed), ("punched", punched)):
        print(f"mixed transfers, {name}: stream {result['mixed']}, "
              f"tunnel {result['tunnel']['mixed']}")
    print(f"UDP_GRO {'off' if os.environ.get(NO_GRO) == '1' else 'on'}; socket buffer "
          f"{os.environ.get(SOCKET_BUFFER, 'default')}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def report(r: dict[str, dict[str, object]]) -> None:
    def rate(result: dict[str, object], key: str) -> float:
        return float(result[key])  # type: ignore[arg-type]

    def line(label: str, ours: dict[str, object], base: dict[str, object], key: str) -> None:
        if key not in base:
            return
        print(row(label, f"{rate(ours, key):.1f}", f"{rate(base, key):.1f}", "",
                  f"{rate(ours, key) / rate(base, key):.3f}", widths=WIDTHS))

    punch = r["meshnat punched"]
    relayed_cc, punched = punch["relayed"], punch["punched"]
    assert isinstance(relayed_cc, dict) and isinstance(punched, dict)
    print(row("50 MiB, MB/s per direction", "meshnat", "baseline", "", "ratio", widths=WIDTHS))
    paths = (("direct", r["meshnat direct"], r["plain"], "plain", r["stock direct"]),
             ("relayed", r["meshnat relayed"], r["forwarder"], "forwarder", r["stock relayed"]),
             ("punched", punched, r["raw qh3"], "raw qh3", None))
    for path, ours, base, base_name, stock in paths:
        for key in ("one_way", "both_ways"):
            way = key.replace("_", " ")
            line(f"{path} {way} vs {base_name}", ours, base, key)
            if stock is not None:
                line(f"  vs py-libp2p 0.8.1 {path}", ours, stock, key)
            tunnel = ours["tunnel"]
            assert isinstance(tunnel, dict)
            line(f"  tunnel, {path} {way} vs {base_name}", tunnel, base, key)
    for key in ("one_way", "both_ways"):
        way = key.replace("_", " ")
        line(f"punched {way} vs plain TCP cone/cone", punched, r["plain cone/cone"], key)
        line(f"punched {way} vs relayed cone/cone", punched, relayed_cc, key)
        tunnels = (punched["tunnel"], relayed_cc["tunnel"])
        assert all(isinstance(t, dict) for t in tunnels)
        line(f"  tunnel, punched vs relayed {way}", *tunnels, key)  # type: ignore[arg-type]
    print(f"punch (cone/cone): {punch['transport']} in {float(punch['punch_ms']):.0f} ms; "
          f"meshnat relay: {rate(r['relay'], 'cpu_s_per_gb'):.1f} CPU s per GB carried, "
          f"{rate(r['relay'], 'kib_per_circuit'):.1f} KiB per open idle circuit")
    for path, result in (("direct", r["meshnat direct"]), ("relayed", r["meshnat relayed"]),
                         ("relayed cone/cone", relayed_cc), ("punched", punched)):
        tunnel = result["tunnel"]
        assert isinstance(tunnel, dict)
        # failed = transfers that lost or changed bytes
        print(f"mixed transfers, {path}: stream {result['mixed']}, tunnel {tunnel['mixed']}")
    print("direct: a TCP connection through the dialer's cone NAT to a public listener (the data "
          "path a punched TCP connection takes); plain: a trio TCP socket on the same path; "
          "forwarder: a plain trio forwarder on the relay host; stock: py-libp2p 0.8.1 as "
          "shipped; punched: the connection HolePuncher opened from behind one cone NAT to a "
          "listener behind another; raw qh3: qh3 driven by a minimal trio loop on that path "
          "(one way only; no libp2p identity check, no stream API); tunnel: forward -> tunnel "
          "-> expose of the listener's plain TCP server, over the same connection")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
