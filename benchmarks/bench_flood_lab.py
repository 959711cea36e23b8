"""Reflection under a flood from one host: another peer's latency, baseline and under flood.

Needs root (network namespaces). Three public hosts on the lab's internet: a reflector
(`meshnat reflector --relay`), a measuring peer on 198.18.0.0/24 and a flooder that holds 2,000
extra addresses in 198.18.10.0/24 ... 198.18.17.0/24 (eight /24 networks of 250, inside the
lab's own RFC 2544 range). The flooder sends padded UDP observe requests to the reflector's
shared UDP port from all 2,000 addresses at RATE datagrams/s in total, and holds silent reflect
streams (8 each) from IDENTITIES fresh peer ids, topped up as the reflector resets them.

The measuring peer asks ROUNDS times over UDP and ROUNDS times over a stream (alternating,
every 100 ms, each within 2 s): first with no flood (the baseline), then under each flood rate,
all in the same run. Printed: p50/p99 of the whole call (retransmissions included) and how many
requests were refused or timed out.

Run: sudo .venv/bin/python -m benchmarks.bench_flood_lab [RATE ...]   (default 2000 10000)
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import AsyncExitStack, suppress
from ipaddress import ip_address
from typing import cast

import trio
from tests.support.netlab import Host, Lab, lab_available

from benchmarks._stats import median_p, row

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
"""Linux: a datagram's source address chosen per sendmsg (struct in_pktinfo)."""
ROUNDS = 100
INTERVAL = 0.1
TIMEOUT = 2.0
IDENTITIES = 16
STREAMS_EACH = 8
FLOOD_NETWORKS = [f"198.18.{n}" for n in range(10, 18)]
FLOOD_ADDRS = [f"{net}.{host}" for net in FLOOD_NETWORKS for host in range(1, 251)]
PORT = 4001
WIDTHS = (26, 8, 10, 10, 9, 10, 9)


# --- roles (run inside the lab's namespaces) ---------------------------------------------------

async def measure(reflector_ip: str, peer_addr: str) -> None:
    """Print one JSON line: latencies (ms) and failures of ROUNDS UDP and ROUNDS stream asks."""
    from meshnat import MeshNode, NodeConfig
    from meshnat._libp2p import merge_peer_addrs
    from meshnat.endpoint import Endpoint
    from meshnat.errors import MeshNatError, PeerTimeout
    from meshnat.reflection.client import observe_over_stream, observe_over_udp

    peer = merge_peer_addrs([peer_addr])[0]
    results: dict[str, dict[str, list[float] | int]] = {
        kind: {"ms": [], "refused": 0, "timeout": 0} for kind in ("udp", "stream")}
    async with MeshNode(NodeConfig(tcp_port=PORT, udp_port=PORT)) as node:
        target = Endpoint(ip_address(reflector_ip), PORT)
        for i in range(2 * ROUNDS):
            kind = "udp" if i % 2 == 0 else "stream"
            started = trio.current_time()
            outcome = results[kind]
            try:
                with trio.fail_after(TIMEOUT + 1):
                    if kind == "udp":
                        await observe_over_udp(node, target, timeout=TIMEOUT)
                    else:
                        await observe_over_stream(node, peer, timeout=TIMEOUT)
                outcome["ms"].append((trio.current_time() - started) * 1000)  # type: ignore[union-attr]
            except (PeerTimeout, trio.TooSlowError):
                outcome["timeout"] += 1  # type: ignore[operator]
            except MeshNatError:
                outcome["refused"] += 1  # type: ignore[operator]
            await trio.sleep_until(started + INTERVAL)
    print(json.dumps(results), flush=True)


async def flood(reflector_ip: str, peer_addr: str, rate: int, duration: float) -> None:
    """Flood UDP requests from FLOOD_ADDRS at `rate`/s and hold silent reflect streams."""
    from meshnat import MeshNode, NodeConfig
    from meshnat._libp2p import merge_peer_addrs
    from meshnat.reflection import REFLECT_PROTOCOL
    from meshnat.reflection.messages import REQUEST_PADDING, ObserveRequest
    from meshnat.wire import encode, frame_datagram, new_txid

    peer = merge_peer_addrs([peer_addr])[0]
    datagram = frame_datagram(encode(ObserveRequest(new_txid(), bytes(REQUEST_PADDING))))
    sent = 0

    async def udp_flood() -> None:
        nonlocal sent
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers: not read
        sources = [socket.inet_aton(a) for a in FLOOD_ADDRS]
        per_tick = max(1, rate // 100)
        next_tick = trio.current_time()
        for tick in range(int(duration * 100)):
            for k in range(per_tick):
                src = sources[(tick * per_tick + k) % len(sources)]
                info = struct.pack("=I4s4s", 0, src, bytes(4))
                with suppress(OSError):  # a full socket buffer: the datagram is lost
                    await sock.sendmsg([datagram], [(socket.IPPROTO_IP, IP_PKTINFO,
                                                     info)], 0, (reflector_ip, PORT))
                    sent += 1
            next_tick += 0.01
            await trio.sleep_until(next_tick)
        sock.close()

    async def hold_streams(node: MeshNode, source: str) -> None:
        network = node.host.get_network()
        streams: list[object] = []
        deadline = trio.current_time() + duration
        while trio.current_time() < deadline:  # top up what the reflector reset, once a second
            with suppress(Exception):  # refused, reset, unreachable: try again next second
                if not network.get_connections(peer.peer_id):
                    await network.dial_addr(peer.addrs[0], peer.peer_id, (source, 0))
                streams = [s for s in streams if not s.is_closed()]  # type: ignore[attr-defined]
                while len(streams) < STREAMS_EACH:
                    with trio.fail_after(2):
                        streams.append(await node.host.new_stream(peer.peer_id,
                                                                  [REFLECT_PROTOCOL]))
            await trio.sleep(1)

    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(MeshNode(NodeConfig(listen_ip=FLOOD_ADDRS[i])))
                 for i in range(IDENTITIES)]
        async with trio.open_nursery() as nursery:
            for i, node in enumerate(nodes):
                nursery.start_soon(hold_streams, node, FLOOD_ADDRS[i])
            nursery.start_soon(udp_flood)
            print(json.dumps({"event": "flooding"}), flush=True)
    print(json.dumps({"event": "done", "sent": sent}), flush=True)


# --- the lab ----------------------------------------------------------------------------------

def run_role(host: Host, *args: str, timeout: float) -> dict[str, object]:
    proc = host.run(host.python("-m", "benchmarks.bench_flood_lab", "--role", *args),
                    timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def udp_receive_drops(host: Host) -> int:
    """The kernel's count of datagrams dropped for a full receive buffer in `host`."""
    lines = [line.split() for line in host.run(["cat", "/proc/net/snmp"], timeout=10)
             .stdout.splitlines() if line.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])


def report(label: str, results: dict[str, object]) -> None:
    for kind in ("udp", "stream"):
        outcome = results[kind]
        assert isinstance(outcome, dict)
        ms = outcome["ms"]
        p50, p99 = median_p(ms, 99) if ms else (float("nan"), float("nan"))
        print(row(label, kind, f"{p50:.1f}", f"{p99:.1f}", len(ms), outcome["refused"],
                  outcome["timeout"], widths=WIDTHS))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rates", nargs="*", type=int, default=[2000, 10000])
    parser.add_argument("--role", nargs="+")
    parser.add_argument("--reflector-src", metavar="DIR",
                        help="run the reflector from this source tree (e.g. an older "
                             "`git archive` of src/) to compare; default: this checkout")
    args = parser.parse_args()
    if args.role:
        role, *params = args.role
        if role == "measure":
            trio.run(measure, *params)
        else:
            trio.run(flood, params[0], params[1], int(params[2]), float(params[3]))
        return
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    with Lab() as lab:
        reflector, measurer, flooder = (lab.public_host(n) for n in ("refl", "meas", "flood"))
        # the flooder's 2,000 addresses, and the reflector's way back to them (on-link)
        batch = "".join(f"addr add {a}/32 dev eth0\n" for a in FLOOD_ADDRS)
        subprocess.run(["ip", "-n", flooder.ns, "-batch", "-"], input=batch, text=True,
                       check=True, timeout=60)
        subprocess.run(["ip", "-n", reflector.ns, "route", "add", "198.18.0.0/16", "dev",
                        "eth0"], check=True, timeout=10)
        env = [] if args.reflector_src is None else ["env", f"PYTHONPATH={args.reflector_src}"]
        reflector_proc, ready = reflector.start_json(
            [*env, *reflector.python("-m", "meshnat", "reflector", "--json", "--relay")],
            timeout=30)
        addrs = cast(list[str], ready["addrs"])
        peer_addr = next(a for a in addrs if "/tcp/" in a)
        print(f"reflector {reflector.ip}, measuring peer {measurer.ip} (198.18.0.0/24), "
              f"flooder: {len(FLOOD_ADDRS)} addresses in {len(FLOOD_NETWORKS)} /24s, "
              f"{IDENTITIES} identities x {STREAMS_EACH} silent streams; "
              f"{ROUNDS} UDP + {ROUNDS} stream asks per phase")
        print(row("phase", "kind", "p50 ms", "p99 ms", "ok", "refused", "timeout",
                  widths=WIDTHS))
        report("baseline", run_role(measurer, "measure", reflector.ip, peer_addr,
                                    timeout=120))
        phase_time = 2 * ROUNDS * INTERVAL + 5  # the asks, and the measuring node's start
        sent, drops = {}, {}
        for rate in args.rates:
            before = udp_receive_drops(reflector)
            proc = flooder.popen(flooder.python(
                "-m", "benchmarks.bench_flood_lab", "--role", "flood", reflector.ip, peer_addr,
                str(rate), str(phase_time + 2)))
            assert proc.stdout is not None
            line = proc.stdout.readline()  # {"event": "flooding"}
            if not line:
                raise RuntimeError(proc.communicate(timeout=5)[1][-2000:])
            time.sleep(2)  # let the flood reach its rate before measuring
            report(f"flood {rate}/s", run_role(measurer, "measure", reflector.ip, peer_addr,
                                               timeout=phase_time + 60))
            out, _ = proc.communicate(timeout=phase_time + 30)
            sent[rate] = json.loads(out.splitlines()[-1])["sent"]
            drops[rate] = udp_receive_drops(reflector) - before
        reflector_proc.send_signal(signal.SIGTERM)
        out, _ = reflector_proc.communicate(timeout=30)
        stopped = json.loads(out.splitlines()[-1])
        print("flood datagrams sent: " + ", ".join(f"{n} at {r}/s" for r, n in sent.items())
              + "; dropped by the reflector's kernel (receive buffer full, before meshnat "
              "sees them): " + ", ".join(f"{n} at {r}/s" for r, n in drops.items())
              + f"; the reflector answered {stopped['served']} requests in all and rate "
              f"limited {stopped['rate_limited']}")
        print("latency: the whole call, retransmissions included (UDP retransmits after "
              "250 ms, doubling); refused: an error answer or a reset stream; timeout: no "
              f"answer in {TIMEOUT:g} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
