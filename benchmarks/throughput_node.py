"""One process of bench_throughput_lab: a relay, a listener or a dialer, meshnat or stock.

Roles (one JSON line each when ready, or with results):
- `relay --ip IP [--stock]`: a circuit relay v2 hop on IP:4001 (meshnat's RelayService with
  its limits raised, or py-libp2p 0.8.1's CircuitV2Protocol as shipped, limits raised the same);
- `forwarder`: a plain trio TCP forwarder on :4100; the client's first 6 bytes name the target
  (IPv4 address, port);
- `listener --ip IP --relay ADDR [--stock] [--reflector ADDR ...]`: reserves on the relay;
  serves SINK (read to end, answer the count) and ECHO (echo until end, half-close) over
  libp2p, and the same as plain TCP on :4200 (first byte `s` or `e`), which a meshnat listener
  also exposes as the tunnel service `plain`; with reflectors it answers punches;
- `dialer --path direct|relayed|punched|plain|forwarder --target ... [--stock]`: SIZE bytes
  one way, then both ways at once, then (meshnat, libp2p paths) TRANSFERS echoed transfers of
  mixed sizes checked by digest, over a bare stream and (meshnat) through a tunnel; prints
  MB/s and the transfers that lost bytes. `punched` (with reflectors) measures the relayed
  circuit, punches, then measures the punched connection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID, STOP_PROTOCOL_ID, CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from benchmarks._pipes import pipe_both_ways
from meshnat._libp2p.quic import gro, sockbuf

SIZE = 50 * 1024 * 1024
NO_GRO = "MNTHRU_NO_GRO"
"""Environment: "1" turns UDP receive coalescing (UDP_GRO) off in this process."""
SOCKET_BUFFER = "MNTHRU_SOCKET_BUFFER"
"""Environment: bytes of QUIC socket buffer each way in this process (bench_throughput_lab
--socket-buffer N; 212992 is a stock Linux's net.core.rmem_max)."""
PROFILE = "MNTHRU_PROFILE"
"""Environment: a directory; a node leaves its cProfile there when it ends (a dialer) or on
SIGINT (bench_throughput_lab --punched-only sends it to the others)."""
CHUNK = 65536
TRANSFERS = 1000
PARALLEL = 16
SINK, ECHO = TProtocol("/bench/sink/1.0.0"), TProtocol("/bench/echo/1.0.0")
LIMITS = RelayLimits(duration=3600, data=1 << 34, max_circuit_conns=256, max_reservations=64)
PLAIN_PORT, FORWARDER_PORT, LIBP2P_PORT, STOCK_PORT = 4200, 4100, 4001, 4002
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def watched(args: argparse.Namespace) -> dict[str, int]:
    """`dialer --watch NAME=PID ...`: other processes (the listener, the relay) whose CPU per
    MiB `measure` reports beside this process's (the lab's namespaces share one pid space)."""
    return {name: int(pid) for name, pid in (watch.split("=") for watch in args.watch)}


def emit(obj: dict[str, object]) -> None:
    print(json.dumps(obj), flush=True)


class Ends:
    """read/write/close_write over a libp2p stream or a trio socket stream."""

    def __init__(self, stream: Any) -> None:
        self._s, self._tcp = stream, isinstance(stream, trio.SocketStream)

    async def read(self) -> bytes:
        if self._tcp:
            return bytes(await self._s.receive_some(CHUNK))
        try:
            return bytes(await self._s.read(CHUNK))
        except StreamEOF:
            return b""

    async def write(self, data: bytes) -> None:
        await (self._s.send_all(data) if self._tcp else self._s.write(data))

    async def close_write(self) -> None:
        await (self._s.send_eof() if self._tcp else self._s.close_write())


async def serve_sink(ends: Ends) -> None:
    total = 0
    while data := await ends.read():
        total += len(data)
    await ends.write(str(total).encode())
    await ends.close_write()


async def serve_echo(ends: Ends) -> None:
    while data := await ends.read():
        await ends.write(data)
    await ends.close_write()


async def plain_server(stream: trio.SocketStream) -> None:
    kind = await stream.receive_some(1)
    await (serve_sink if kind == b"s" else serve_echo)(Ends(stream))


async def forwarder(client: trio.SocketStream) -> None:
    header = b""
    while len(header) < 6:
        header += await client.receive_some(6 - len(header))
    upstream = await trio.open_tcp_stream(socket.inet_ntoa(header[:4]),
                                          int.from_bytes(header[4:], "big"))

    await pipe_both_ways(client, upstream)


async def one_way(ends: Ends) -> float:
    chunk = random.Random(1).randbytes(CHUNK)
    started = trio.current_time()
    for _ in range(SIZE // CHUNK):
        await ends.write(chunk)
    await ends.close_write()
    answer = b""
    while data := await ends.read():
        answer += data
    assert int(answer) == SIZE, answer
    return SIZE / (trio.current_time() - started) / 1e6


async def echo_digest(ends: Ends, payload: bytes) -> bool:
    digest = hashlib.sha256()

    async def send() -> None:
        for at in range(0, len(payload), CHUNK):
            await ends.write(payload[at:at + CHUNK])
        await ends.close_write()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        received = 0
        while data := await ends.read():
            digest.update(data)
            received += len(data)
    return received == len(payload) and digest.digest() == hashlib.sha256(payload).digest()


async def both_ways(ends: Ends) -> float:
    payload = random.Random(2).randbytes(SIZE)
    started = trio.current_time()
    assert await echo_digest(ends, payload)
    return SIZE / (trio.current_time() - started) / 1e6


async def mixed(opener: Callable[[], Awaitable[Ends]]) -> dict[str, int]:
    """TRANSFERS echoed transfers, sizes 1 B .. 1 MiB (log-uniform), PARALLEL at a time."""
    rng = random.Random(3)
    sizes = [int(2 ** rng.uniform(0, 20)) for _ in range(TRANSFERS)]
    failed, sent = [0], sum(sizes)
    limiter = trio.CapacityLimiter(PARALLEL)

    async def one(index: int, size: int) -> None:
        async with limiter:
            payload = random.Random(index).randbytes(size)
            if not await echo_digest(await opener(), payload):
                failed[0] += 1

    async with trio.open_nursery() as nursery:
        for index, size in enumerate(sizes):
            nursery.start_soon(one, index, size)
    return {"transfers": TRANSFERS, "bytes": sent, "failed": failed[0]}


def stock_host(ip: str) -> tuple[Any, multiaddr.Multiaddr]:
    listen = multiaddr.Multiaddr(f"/ip4/{ip}/tcp/{STOCK_PORT}")
    return new_host(listen_addrs=[listen]), listen


def libp2p_handlers(host: Any) -> None:
    host.set_stream_handler(SINK, lambda s: serve_sink(Ends(s)))
    host.set_stream_handler(ECHO, lambda s: serve_echo(Ends(s)))


async def run(args: argparse.Namespace) -> None:
    if args.role == "forwarder":
        await trio.serve_tcp(forwarder, FORWARDER_PORT, task_status=_Ready())
    elif args.stock:
        await run_stock(args)
    else:
        from benchmarks.throughput_mesh import run_mesh
        await run_mesh(args)


class _Ready:
    def started(self, value: object = None) -> None:
        emit({"event": "ready"})


async def run_stock(args: argparse.Namespace) -> None:
    host, listen = stock_host(args.ip or "0.0.0.0")
    hop = args.role == "relay"
    protocol = CircuitV2Protocol(host, limits=LIMITS, allow_hop=hop)
    async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery, \
            background_trio_service(protocol):
        if hop:
            host.set_stream_handler(PROTOCOL_ID, protocol._handle_hop_stream)
        host.set_stream_handler(STOP_PROTOCOL_ID, protocol._handle_stop_stream)
        libp2p_handlers(host)
        roles = RelayRole.HOP | RelayRole.STOP if hop else RelayRole.STOP
        transport = CircuitV2Transport(host, protocol, RelayConfig(roles=roles, limits=LIMITS))
        if hop:
            emit({"event": "ready", "addr": f"/ip4/{args.ip}/tcp/{STOCK_PORT}/p2p/{host.get_id()}"})
            await trio.sleep_forever()
        relay = info_from_p2p_addr(multiaddr.Multiaddr(args.relay))
        await host.connect(relay)
        if args.role == "listener":
            stream = await host.new_stream(relay.peer_id, [PROTOCOL_ID])
            await transport.reserve(stream, relay.peer_id, nursery)
            emit({"event": "ready", "peer_id": str(host.get_id()),
                  "addr": f"/ip4/{args.ip}/tcp/{STOCK_PORT}"})
            await trio.sleep_forever()
        peer = ID.from_base58(args.peer)
        if args.path == "relayed":
            await transport.dial(multiaddr.Multiaddr(f"{args.relay}/p2p-circuit/p2p/{peer}"))
        else:
            await host.connect(PeerInfo(peer, [multiaddr.Multiaddr(args.target)]))

        async def opener(protocol_id: TProtocol) -> Ends:
            return Ends(await host.new_stream(peer, [protocol_id]))

        emit(await measure(partial(opener, SINK), partial(opener, ECHO), transfers=False))
        nursery.cancel_scope.cancel()


async def plain_opener(host: str, port: int, kind: bytes, via: tuple[str, int] | None) -> Ends:
    if via is None:
        stream = await trio.open_tcp_stream(host, port)
    else:
        stream = await trio.open_tcp_stream(*via)
        await stream.send_all(socket.inet_aton(host) + port.to_bytes(2, "big"))
    await stream.send_all(kind)
    return Ends(stream)


async def measure(sink: Callable[[], Awaitable[Ends]], echo: Callable[[], Awaitable[Ends]], *,
                  transfers: bool, watch: Mapping[str, int] | None = None) -> dict[str, object]:
    """MB/s one way and both ways, each with this process's CPU seconds per MiB carried
    (`*_cpu_s_per_mib`: both ways carries 2 x SIZE), far less noisy than MB/s on a loaded
    machine, and the same for each `watch`ed process (`*_cpu_s_per_mib_NAME`)."""
    result: dict[str, object] = {}
    watch = watch or {}
    for key, opener, run_, carried in (("one_way", sink, one_way, SIZE),
                                       ("both_ways", echo, both_ways, 2 * SIZE)):
        cpu = time.process_time()
        others = {name: cpu_seconds(pid) for name, pid in watch.items()}
        result[key] = await run_(await opener())
        mib = carried / 2**20
        result[f"{key}_cpu_s_per_mib"] = (time.process_time() - cpu) / mib
        for name, pid in watch.items():
            result[f"{key}_cpu_s_per_mib_{name}"] = (cpu_seconds(pid) - others[name]) / mib
    if transfers:
        result["mixed"] = await mixed(echo)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("relay", "forwarder", "listener", "dialer"))
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--ip")
    parser.add_argument("--relay")
    parser.add_argument("--peer")
    parser.add_argument("--target")
    parser.add_argument("--path", choices=("direct", "relayed", "punched", "plain",
                                           "forwarder", "circuits"))
    parser.add_argument("--reflector", action="append", help="(meshnat) discover mappings and "
                        "punch: a reflector's multiaddr, repeated")
    parser.add_argument("--forwarder")
    parser.add_argument("--watch", action="append", default=[], metavar="NAME=PID",
                        help="report this process's CPU per MiB too, repeated")
    args = parser.parse_args()
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    if os.environ.get(NO_GRO) == "1":  # the baseline of bench_throughput_lab --no-gro
        gro.COALESCE = False
    if (buffer := os.environ.get(SOCKET_BUFFER)) is not None:
        sockbuf.SOCKET_BUFFER = int(buffer)
    if args.role == "dialer" and args.path in ("plain", "forwarder"):
        host, port = args.target.rsplit(":", 1)
        via = None if args.path == "plain" else (args.forwarder, FORWARDER_PORT)
        emit(trio.run(partial(measure, partial(plain_opener, host, int(port), b"s", via),
                              partial(plain_opener, host, int(port), b"e", via),
                              transfers=False)))
        return
    if (where := os.environ.get(PROFILE)) is None:
        trio.run(run, args)
        return
    import cProfile

    with cProfile.Profile() as profile:
        try:
            trio.run(run, args)
        except KeyboardInterrupt:
            pass
        finally:
            profile.dump_stats(f"{where}/{args.role}-{os.getpid()}.prof")


if __name__ == "__main__":
    main()
