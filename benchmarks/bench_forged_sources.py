"""UDP reflection on a node's shared port while datagrams with a forged source port 0 arrive.

    sudo .venv/bin/python -m benchmarks.bench_forged_sources [--rate 1000] [--requests 200]

Needs root (a raw socket forges the source). Loopback only. A reflector and a client on
127.0.0.1; the client asks `--requests` UDP reflections one after another, 10 ms apart (1 s
deadline each), first with no other traffic (the baseline), then while a thread sends `--rate`
datagrams per
second from 127.0.0.1:0 to the reflector's port (half meshnat observe requests, half QUIC-looking
packets). Printed: p50/p99 reflection RTT and timeouts for both phases, and the reflector's
count of datagrams dropped for an impossible source. Before this count existed, each such
datagram raised into py-libp2p's receive loop, which then slept 10 ms: at 1,000/s the port
answered nobody.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import replace

import trio
from tests.support.rawudp import raw_available, send_forged_udp

from benchmarks._stats import median_p
from meshnat import MeshNode, NodeConfig
from meshnat.endpoint import Endpoint
from meshnat.errors import PeerTimeout
from meshnat.reflection import ReflectionConfig, ReflectionService
from meshnat.reflection.client import observe_over_udp
from meshnat.reflection.messages import REQUEST_PADDING, ObserveRequest
from meshnat.wire import encode, frame_datagram, new_txid

LOOPBACK = NodeConfig(listen_ip="127.0.0.1")
# the limiter is not what is measured here: let one client ask as fast as it likes
UNLIMITED = replace(ReflectionConfig(), rate=1e6, burst=10**6, network_rate=1e6,
                    network_burst=10**6)


PACE = 0.01


def flood(port: int, rate: int, stop: threading.Event, sent: list[int]) -> None:
    """Forged datagrams at `rate` per second until `stop` (at most 120 s)."""
    request = frame_datagram(encode(ObserveRequest(new_txid(), bytes(REQUEST_PADDING))))
    quic = b"\xc0" + bytes(1199)
    started = time.monotonic()
    while not stop.is_set() and time.monotonic() - started < 120:
        due = int((time.monotonic() - started) * rate)
        while sent[0] < due:
            send_forged_udp(("127.0.0.1", 0), ("127.0.0.1", port),
                            request if sent[0] % 2 else quic)
            sent[0] += 1
        time.sleep(0.001)


async def measure(client: MeshNode, reflector: Endpoint, requests: int
                  ) -> tuple[list[float], int]:
    rtts, timeouts = [], 0
    for _ in range(requests):
        await trio.sleep(PACE)  # spread the requests over the flood, ~100 per second
        try:
            reflection = await observe_over_udp(client, reflector, timeout=1.0)
        except PeerTimeout:
            timeouts += 1
        else:
            rtts.append(reflection.rtt)
    return rtts, timeouts


def row(name: str, rtts: list[float], timeouts: int, requests: int) -> str:
    if not rtts:
        return f"{name:24} {'-':>8} {'-':>8} {timeouts:>5}/{requests}"
    p50, p99 = median_p(rtts, 99)
    return f"{name:24} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f} {timeouts:>5}/{requests}"


async def main(rate: int, requests: int) -> None:
    async with MeshNode(LOOPBACK) as reflector_node, MeshNode(LOOPBACK) as client:
        await reflector_node.mount(ReflectionService(UNLIMITED))
        reflector = reflector_node.local_endpoints("udp")[0]
        base, base_timeouts = await measure(client, reflector, requests)
        stop, sent = threading.Event(), [0]
        sender = threading.Thread(target=flood, args=(reflector.port, rate, stop, sent))
        sender.start()
        try:
            under, under_timeouts = await measure(client, reflector, requests)
        finally:
            stop.set()
            await trio.to_thread.run_sync(sender.join)
        stats = reflector_node.udp.statistics()
    print(f"{'phase':24} {'p50 ms':>8} {'p99 ms':>8} {'timeouts':>9}")
    print(row("baseline", base, base_timeouts, requests))
    print(row(f"{rate}/s forged port 0", under, under_timeouts, requests))
    print(f"\nforged datagrams sent {sent[0]}, dropped as impossible sources "
          f"{stats.impossible_sources}, dispatched to meshnat {stats.dispatched}")
    if base and under:
        print(f"p99 under flood / baseline: {median_p(under, 99)[1] / median_p(base, 99)[1]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    reason = raw_available()
    if reason is not None:
        sys.exit(f"skipped: {reason}")
    trio.run(main, args.rate, args.requests)
