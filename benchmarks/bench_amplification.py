"""Amplification towards a third party: bytes a node sends to an address a requester named
(and never proved) against the bytes that requester sent.

Scenarios (loopback; the "victim" is 8 UDP and 8 TCP sockets on 127.0.0.2, where no peer is):
- `traversal x5`: five traversal Offers, each naming 8 of the victim's UDP ports;
- `punch ED x3`: three punch Offers that claim an endpoint-dependent NAT against an
  endpoint-independent node (birthday probing of the victim's ports) and name the victim's
  TCP ports, plus their Syncs, over a relay circuit;
- `punch EI x3`: the same against an endpoint-dependent node (its 256 sockets probe the
  victim's endpoint);
- `punch ?? x3`: the same with no mapping claimed (a traversal on the shared port, TCP).
Each scenario waits out the node's own timeouts (not a fixed count), draining the victim every
10 ms. As root, raw sockets see every IPv4 packet to 127.0.0.2, any port (birthday probes go to
random ports): victim bytes are their IP total lengths, and SYNs are counted. Otherwise only
the victim's own sockets count: UDP datagrams with their 28 header bytes plus 240 per TCP
connection (the charge `traversal/budget.py` makes for a dial).

Run: .venv/bin/python -m benchmarks.bench_amplification [--baseline SRC]
`--baseline SRC` runs the same scenarios in a subprocess against another source tree (e.g.
`git worktree add /tmp/mainwt c735657` then `--baseline /tmp/mainwt/src`) and prints both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from ipaddress import IPv4Address

import trio

from meshnat import MeshNode, NodeConfig, _libp2p, exchange
from meshnat._libp2p import PeerInfo
from meshnat.endpoint import Endpoint
from meshnat.errors import MeshNatError
from meshnat.punch import PUNCH_PROTOCOL, HolePuncher, PunchConfig
from meshnat.punch import messages as punch_messages
from meshnat.punch.messages import MappingHint, Sync
from meshnat.relay import RelayClient, RelayService
from meshnat.traversal import TraversalConfig, TraversalService
from meshnat.traversal.messages import Offer
from meshnat.traversal.service import TRAVERSAL_PROTOCOL
from meshnat.wire import decode, encode, frame_stream, new_txid

LOOPBACK = NodeConfig(listen_ip="127.0.0.1")
VICTIM = "127.0.0.2"
TCP_DIAL = 240


class Victim:
    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.udp = [self._open(socket.SOCK_DGRAM) for _ in range(8)]
        self.tcp = [self._open(socket.SOCK_STREAM) for _ in range(8)]
        self.datagrams = self.udp_bytes = self.connections = 0
        self.raw: list[socket.socket] = []
        self.raw_bytes = self.raw_datagrams = self.syns = 0
        if os.geteuid() == 0:
            for proto in (socket.IPPROTO_UDP, socket.IPPROTO_TCP):
                raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
                raw.setblocking(False)
                self.raw.append(raw)
                self.socks.append(raw)

    def _open(self, kind: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        self.socks.append(sock)
        if kind == socket.SOCK_DGRAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind((VICTIM, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
        return sock

    def endpoints(self, socks: list[socket.socket]) -> tuple[Endpoint, ...]:
        return tuple(Endpoint(IPv4Address(VICTIM), s.getsockname()[1]) for s in socks)

    def drain(self) -> None:
        victim = socket.inet_aton(VICTIM)
        for raw in self.raw:
            for _ in range(100_000):
                try:
                    packet = raw.recv(65535)
                except BlockingIOError:
                    break
                if packet[16:20] != victim:
                    continue
                self.raw_bytes += int.from_bytes(packet[2:4], "big")
                header = (packet[0] & 0x0F) * 4
                if packet[9] == socket.IPPROTO_UDP:
                    self.raw_datagrams += 1
                elif packet[header + 13] & 0x12 == 0x02:  # SYN without ACK
                    self.syns += 1
        for sock in self.udp:
            for _ in range(100_000):
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                self.datagrams += 1
                self.udp_bytes += len(data) + 28
        for sock in self.tcp:
            for _ in range(1000):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                self.connections += 1
                conn.close()

    @property
    def received(self) -> int:
        return self.raw_bytes if self.raw else self.udp_bytes + TCP_DIAL * self.connections

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


async def drain_for(victim: Victim, seconds: float) -> None:
    for _ in range(int(seconds * 100)):
        await trio.sleep(0.01)
        victim.drain()


async def traversal_x5(victim: Victim) -> int:
    sent = 0
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(MeshNode(LOOPBACK))
        attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
        await node.mount(TraversalService(TraversalConfig()))
        for _ in range(5):
            offer = Offer(new_txid(), victim.endpoints(victim.udp))
            sent += len(frame_stream(encode(offer)))
            with contextlib.suppress(MeshNatError):  # refused (a limit): its bytes count
                await exchange.request(attacker, node.peer_info(), TRAVERSAL_PROTOCOL, offer,
                                       Offer, timeout=5)
        await drain_for(victim, TraversalConfig().probe_timeout + 1.0)
    return sent


async def punch_x3(victim: Victim, ours: MappingHint, claimed: MappingHint) -> int:
    sent = 0
    config = PunchConfig(mapping=ours)
    padding = getattr(punch_messages, "Padding", None)
    expected = (punch_messages.Offer,) if padding is None else (punch_messages.Offer, padding)
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(MeshNode(LOOPBACK))
        node = await stack.enter_async_context(MeshNode(LOOPBACK))
        attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
        await relay.mount(RelayService())
        await (await node.mount(RelayClient())).reserve(relay.peer_info())
        await node.mount(HolePuncher(config))
        await (await attacker.mount(RelayClient())).dial(relay.peer_info(), node.peer_id)
        for _ in range(3):
            offer = punch_messages.Offer(new_txid(), victim.endpoints(victim.udp[:1]),
                                         victim.endpoints(victim.tcp), claimed)
            frames = [frame_stream(encode(offer)), frame_stream(encode(Sync(offer.txid)))]
            stream = await attacker.open_stream(PeerInfo(node.peer_id, []), PUNCH_PROTOCOL,
                                                timeout=5)
            await stream.write(frames[0])
            for _ in range(20):
                reply = decode(await _libp2p.read_frame(stream), *expected)
                if isinstance(reply, punch_messages.Offer):
                    break
            await stream.write(frames[1])
            sent += sum(map(len, frames))
            await drain_for(victim, config.punch_timeout + 1.5)
            await _libp2p.reset_quietly(stream)
    return sent


async def punch_ed(victim: Victim) -> int:
    return await punch_x3(victim, MappingHint.ENDPOINT_INDEPENDENT,
                          MappingHint.ENDPOINT_DEPENDENT)


async def punch_ei(victim: Victim) -> int:
    return await punch_x3(victim, MappingHint.ENDPOINT_DEPENDENT,
                          MappingHint.ENDPOINT_INDEPENDENT)


async def punch_unknown(victim: Victim) -> int:
    return await punch_x3(victim, MappingHint.UNKNOWN, MappingHint.UNKNOWN)


SCENARIOS = {"traversal x5": traversal_x5, "punch ED x3": punch_ed, "punch EI x3": punch_ei,
             "punch ?? x3": punch_unknown}


async def measure() -> dict[str, dict[str, int]]:
    results = {}
    for name, scenario in SCENARIOS.items():
        victim = Victim()
        try:
            sent = await scenario(victim)
            victim.drain()
        finally:
            victim.close()
        results[name] = {"sent": sent, "received": victim.received,
                         "datagrams": victim.raw_datagrams if victim.raw else victim.datagrams,
                         "tcp": victim.syns if victim.raw else victim.connections}
    return results


def show(label: str, results: dict[str, dict[str, int]]) -> None:
    print(f"{label}")
    print(f"  {'scenario':<14} {'requester sent':>14} {'victim got':>11} {'datagrams':>9} "
          f"{'TCP SYNs' if os.geteuid() == 0 else 'TCP conns':>9} {'ratio':>8}")
    for name, r in results.items():
        ratio = r["received"] / r["sent"] if r["sent"] else float("inf")
        print(f"  {name:<14} {r['sent']:>12} B {r['received']:>9} B {r['datagrams']:>9} "
              f"{r['tcp']:>9} {ratio:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="another source tree to measure first")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.baseline:
        env = dict(os.environ, PYTHONPATH=args.baseline)
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_amplification",
                              "--json"], env=env, capture_output=True, text=True, check=True,
                             timeout=300)
        show(f"baseline ({args.baseline})", json.loads(out.stdout.strip().splitlines()[-1]))
    results = trio.run(measure)
    if args.json:
        print(json.dumps(results))
    else:
        show("this tree", results)


if __name__ == "__main__":
    main()
