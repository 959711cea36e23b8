"""Reflection answers per second on loopback, over UDP and over streams.

UDP: a plain socket keeps a window of padded ObserveRequests in flight to a meshnat reflector;
the baseline is the same client against a minimal trio UDP echo server in the same run.
Streams: sequential requests, one stream each, over one TCP connection; the baseline is an
EchoService round trip on the same connection kind.

Run: .venv/bin/python -m benchmarks.bench_reflection
"""

from __future__ import annotations

import socket

import trio

from benchmarks._stats import row
from meshnat import EchoService, MeshNode, NodeConfig
from meshnat.echo import echo
from meshnat.endpoint import Endpoint
from meshnat.reflection import ReflectionConfig, ReflectionService
from meshnat.reflection.client import observe_over_stream
from meshnat.reflection.messages import REQUEST_PADDING, ObserveRequest
from meshnat.wire import encode, frame_datagram, new_txid

UDP_REQUESTS, WINDOW, STREAM_REQUESTS = 20_000, 64, 300
UNLIMITED = ReflectionConfig(rate=1e9, burst=10**9)
LOOPBACK = NodeConfig(listen_ip="127.0.0.1")


async def udp_rate(target: Endpoint) -> tuple[float, int]:
    """(answers per second, answers lost) for UDP_REQUESTS requests, WINDOW in flight."""
    datagram = frame_datagram(encode(ObserveRequest(new_txid(), bytes(REQUEST_PADDING))))
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    answered = 0
    started = trio.current_time()
    with sock, trio.move_on_after(30):
        for _ in range(UDP_REQUESTS // WINDOW):
            for _ in range(WINDOW):
                await sock.sendto(datagram, target.to_sockaddr())
            with trio.move_on_after(0.5):  # a lost datagram must not stall the run
                for _ in range(WINDOW):
                    await sock.recv(2048)
                    answered += 1
    elapsed = trio.current_time() - started
    return answered / elapsed, (UDP_REQUESTS // WINDOW) * WINDOW - answered


async def plain_udp_echo(task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    with sock:
        task_status.started(Endpoint.from_sockaddr(sock.getsockname()))
        while True:
            data, addr = await sock.recvfrom(2048)
            await sock.sendto(data, addr)


async def main() -> None:
    async with MeshNode(LOOPBACK) as reflector, MeshNode(LOOPBACK) as client, \
            trio.open_nursery() as nursery:
        await reflector.mount(ReflectionService(UNLIMITED))
        await reflector.mount(EchoService())
        echo_at = await nursery.start(plain_udp_echo)
        base_rate, base_lost = await udp_rate(echo_at)
        ours_rate, ours_lost = await udp_rate(reflector.listen_endpoint("udp"))

        peer = reflector.peer_info()
        await observe_over_stream(client, peer, timeout=5)  # connect + warm up
        await echo(client, peer, b"warm-up")
        started = trio.current_time()
        for _ in range(STREAM_REQUESTS):
            await observe_over_stream(client, peer, timeout=5)
        stream_rate = STREAM_REQUESTS / (trio.current_time() - started)
        started = trio.current_time()
        for _ in range(STREAM_REQUESTS):
            await echo(client, peer, b"x" * 24)
        echo_rate = STREAM_REQUESTS / (trio.current_time() - started)
        nursery.cancel_scope.cancel()

    print(row("reflection answers/s (loopback)", "meshnat", "baseline", "ratio"))
    print(row("udp, 64 in flight", f"{ours_rate:,.0f}", f"{base_rate:,.0f}",
              f"{ours_rate / base_rate:.2f}"))
    print(row("stream, sequential", f"{stream_rate:,.0f}", f"{echo_rate:,.0f}",
              f"{stream_rate / echo_rate:.2f}"))
    print(f"udp baseline: plain trio UDP echo; lost {ours_lost} (meshnat) / {base_lost} (echo)")
    print("stream baseline: meshnat EchoService round trip (new stream each) on the same host")


if __name__ == "__main__":
    trio.run(main)
