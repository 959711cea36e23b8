"""Tunnels on loopback: 50 MB through `forward` -> tunnel -> `expose`, and time to first byte.

Printed, each against a baseline measured in the same run:
- MB/s of 50 MB through a tunnel on a direct path, against a plain TCP connection to the same
  sink;
- MB/s through a tunnel on a relayed path (a circuit through a RelayService on loopback),
  against a minimal plain trio TCP forwarder in front of the same sink;
- time to the first byte of an HTTP answer through a fresh tunnel (a new stream on an existing
  connection, and the very first one, which also connects), against the same request made
  directly to the server.

Run: .venv/bin/python -m benchmarks.bench_tunnel
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import trio

from benchmarks._stats import median_p, row
from benchmarks.bench_relay_throughput import SIZE, forwarder, plain_sink, socket_rate
from meshnat import Connector, MeshNode, NodeConfig
from meshnat._libp2p import PeerInfo
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.tunnel import ANY_PEER, TunnelService

LOOPBACK = NodeConfig(listen_ip="127.0.0.1")
REQUESTS = 30
WIDTHS = (44, 12, 12, 8)
ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def http_server(stream: trio.SocketStream) -> None:
    """Answers one request with a fixed 5-byte body once the headers have arrived."""
    request = b""
    while b"\r\n\r\n" not in request:
        data = await stream.receive_some(4096)
        if not data:
            return
        request += data
    await stream.send_all(ANSWER)
    await stream.send_eof()


async def ttfb(port: int) -> float:
    """Seconds from connect to the first byte of the answer."""
    started = trio.current_time()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        first = await stream.receive_some(4096)
        elapsed = trio.current_time() - started
        while await stream.receive_some(4096):
            pass
    assert first.startswith(b"HTTP/1.0 200")
    return elapsed


async def serve(nursery: trio.Nursery, handler: object) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


@asynccontextmanager
async def forwarded(client: TunnelService, peer: PeerInfo, name: str) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(client.forward, peer, name, ("127.0.0.1", 0))
        yield port
        nursery.cancel_scope.cancel()


async def main() -> None:
    big = RelayServiceConfig(circuit_bytes=1 << 30, circuit_duration=600)
    async with trio.open_nursery() as nursery:
        async with AsyncExitStack() as stack:
            relay, a, b, c, d = [await stack.enter_async_context(MeshNode(LOOPBACK))
                                 for _ in range(5)]
            sink_port = await serve(nursery, plain_sink)
            http_port = await serve(nursery, http_server)
            fwd_port = await serve(nursery, partial(forwarder, sink_port))
            await relay.mount(RelayService(big))
            await (await b.mount(RelayClient())).reserve(relay.peer_info())
            server = await b.mount(TunnelService())
            server.expose("sink", ("127.0.0.1", sink_port), allow=ANY_PEER)
            server.expose("http", ("127.0.0.1", http_port), allow=ANY_PEER)
            direct_client = await a.mount(TunnelService())
            relayed_client = await c.mount(TunnelService(connector=await c.mount(Connector(
                relays=[relay.peer_info()], relay_client=await c.mount(RelayClient())))))
            by_id = PeerInfo(b.peer_id, [])

            plain = await socket_rate(sink_port)
            plain_fwd = await socket_rate(fwd_port)
            async with forwarded(direct_client, b.peer_info(), "sink") as port:
                direct = await socket_rate(port)
            async with forwarded(relayed_client, by_id, "sink") as port:
                relayed = await socket_rate(port)

            direct_http = [await ttfb(http_port) for _ in range(REQUESTS)]
            async with forwarded(direct_client, b.peer_info(), "http") as port:
                tunnel_http = [await ttfb(port) for _ in range(REQUESTS)]
            cold_client = await d.mount(TunnelService())  # not yet connected to b
            async with forwarded(cold_client, b.peer_info(), "http") as port:
                cold = await ttfb(port)
        nursery.cancel_scope.cancel()

    print(row(f"{SIZE >> 20} MiB through a tunnel, loopback", "MB/s", "baseline", "ratio",
              widths=WIDTHS))
    print(row("direct path (TCP+Noise+Yamux)", f"{direct:.1f}", f"{plain:.1f}",
              f"{direct / plain:.3f}", widths=WIDTHS))
    print(row("relayed path (circuit relay v2)", f"{relayed:.1f}", f"{plain_fwd:.1f}",
              f"{relayed / plain_fwd:.3f}", widths=WIDTHS))
    med, p90 = median_p(tunnel_http, 90)
    base_med, base_p90 = median_p(direct_http, 90)
    print(row(f"HTTP time to first byte ({REQUESTS} requests)", "median ms", "baseline",
              "ratio", widths=WIDTHS))
    print(row("fresh tunnel, existing connection", f"{med * 1e3:.2f}", f"{base_med * 1e3:.2f}",
              f"{med / base_med:.1f}", widths=WIDTHS))
    print(row("  p90", f"{p90 * 1e3:.2f}", f"{base_p90 * 1e3:.2f}", "", widths=WIDTHS))
    print(row("first tunnel, connecting as well", f"{cold * 1e3:.2f}", f"{base_med * 1e3:.2f}",
              f"{cold / base_med:.1f}", widths=WIDTHS))
    print("baselines: a plain TCP socket to the sink; a plain trio TCP forwarder to the sink; "
          "the HTTP server asked directly")


if __name__ == "__main__":
    trio.run(main)
