"""Throughput of a 50 MB transfer on loopback: direct, through the meshnat relay, and baselines.

Printed: MB/s over a direct libp2p connection (TCP + Noise + Yamux) with its ratio to a plain
socket, and through a circuit relay (meshnat's RelayService, limits raised to let 50 MB
through) with its ratio to a minimal plain-socket TCP forwarder, measured in the same run.

py-libp2p 0.8.1 as shipped is not a baseline here: in one process meshnat's Yamux replaces
py-libp2p's for every host (`yamux.install`), so a "stock" host would not be stock. The lab
benchmark (bench_throughput_lab) runs it in processes of its own.

Run: .venv/bin/python -m benchmarks.bench_relay_throughput
"""

from __future__ import annotations

from functools import partial

import trio
from libp2p.network.stream.exceptions import StreamEOF

from benchmarks._pipes import pipe_both_ways
from benchmarks._stats import row
from meshnat import MeshNode, NodeConfig
from meshnat._libp2p import INetConn, INetStream, TProtocol, open_stream_on
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig

SIZE = 50 * 1024 * 1024
CHUNK = 64 * 1024
SINK = TProtocol("/bench/sink/1.0.0")
LOOPBACK = NodeConfig(listen_ip="127.0.0.1")


async def sink_handler(stream: INetStream) -> None:
    total = 0
    try:
        while True:
            total += len(await stream.read(CHUNK))
    except StreamEOF:
        await stream.write(str(total).encode())
        await stream.close()


async def libp2p_rate(node: MeshNode, conn: INetConn) -> float:
    stream = await open_stream_on(node.host, conn, SINK, 10)
    chunk = bytes(CHUNK)
    started = trio.current_time()
    for _ in range(SIZE // CHUNK):
        await stream.write(chunk)
    await stream.close()
    assert int(await stream.read(64)) == SIZE
    return SIZE / (trio.current_time() - started) / 1e6


async def socket_rate(port: int) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    chunk = bytes(CHUNK)
    started = trio.current_time()
    for _ in range(SIZE // CHUNK):
        await stream.send_all(chunk)
    await stream.send_eof()
    assert int(await stream.receive_some(64)) == SIZE
    return SIZE / (trio.current_time() - started) / 1e6


async def plain_sink(stream: trio.SocketStream) -> None:
    total = 0
    while data := await stream.receive_some(CHUNK):
        total += len(data)
    await stream.send_all(str(total).encode())


async def forwarder(target: int, client: trio.SocketStream) -> None:
    """A minimal relay: pipe bytes both ways, half-close included."""
    upstream = await trio.open_tcp_stream("127.0.0.1", target)

    await pipe_both_ways(client, upstream)


async def main() -> None:
    big = RelayServiceConfig(circuit_bytes=1 << 30, circuit_duration=600)
    async with MeshNode(LOOPBACK) as relay, MeshNode(LOOPBACK) as a, MeshNode(LOOPBACK) as b, \
            trio.open_nursery() as nursery:
        await relay.mount(RelayService(big))
        b.host.set_stream_handler(SINK, sink_handler)
        b_client, a_client = await b.mount(RelayClient()), await a.mount(RelayClient())
        await b_client.reserve(relay.peer_info())
        relayed = await a_client.dial(relay.peer_info(), b.peer_id)
        tcp = next(x for x in b.peer_info().addrs if "/tcp/" in str(x))
        direct = await a.host.get_network().dial_addr(tcp, b.peer_id)
        sinks = await nursery.start(partial(trio.serve_tcp, plain_sink, 0, host="127.0.0.1"))
        sink_port = sinks[0].socket.getsockname()[1]
        fwds = await nursery.start(partial(trio.serve_tcp, partial(forwarder, sink_port), 0,
                                           host="127.0.0.1"))
        fwd_port = fwds[0].socket.getsockname()[1]
        plain = await socket_rate(sink_port)
        forwarded = await socket_rate(fwd_port)
        direct_rate = await libp2p_rate(a, direct)
        relay_rate = await libp2p_rate(a, relayed)
        nursery.cancel_scope.cancel()
    print(row("50 MB, loopback", "MB/s", "baseline", "ratio", widths=(40, 12, 12, 8)))
    print(row("direct libp2p (TCP+Noise+Yamux)", f"{direct_rate:.1f}", f"{plain:.1f}",
              f"{direct_rate / plain:.2f}", widths=(40, 12, 12, 8)))
    print(row("circuit relay (py-libp2p relay v2)", f"{relay_rate:.1f}", f"{forwarded:.1f}",
              f"{relay_rate / forwarded:.2f}", widths=(40, 12, 12, 8)))
    print("baselines: a plain TCP socket to a sink; a minimal trio TCP forwarder to the same sink")


if __name__ == "__main__":
    trio.run(main)
