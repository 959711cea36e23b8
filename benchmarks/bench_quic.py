"""50 MiB over one QUIC stream between two processes on loopback: three stacks, one run.

Printed: median MB/s of `runs` runs (interleaved) for a raw qh3 connection driven by a minimal
trio loop (the baseline: socket drained while readable, one batch into qh3, one send pass per
wake-up; no libp2p identity check, no stream API, no demultiplexing), meshnat's own QUIC
transport (`_libp2p/quic`, qh3) between two py-libp2p hosts, and py-libp2p 0.8.1's stock QUIC
transport (aioquic) between two hosts, each with its ratio to the baseline. The receiver runs
in a child process; the time runs from the first byte written to the receiver's answer that
it has the last one (a short count fails the run).

Run: .venv/bin/python -m benchmarks.bench_quic [size in MiB] [runs]
In the NAT lab (bench_throughput_lab) the raw driver runs as `--serve raw IP:PORT` in one
namespace and `--send raw IP:PORT SIZE` (prints {"one_way": MB/s}) in another.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.transport.tcp.tcp import TCP
from qh3.quic import events
from qh3.quic.connection import QuicConnection

from benchmarks._stats import row
from meshnat._libp2p import identity
from meshnat._libp2p.quic import QuicTransport
from meshnat._libp2p.quic.tls import configuration, libp2p_certificate

CHUNK = 64 * 1024
SINK = TProtocol("/bench/sink/1.0.0")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]
WIDTHS = (34, 10, 8, 10, 30)
WINDOWS = {"max_stream_data": 8 << 20, "max_data": 32 << 20, "idle_timeout": 30.0}


class LostBytes(Exception):
    """The receiver counted fewer bytes than were sent: the stream ended short."""


# --- raw qh3, minimal trio driver -------------------------------------------------------------

async def raw_pump(sock: socket.socket, quic: QuicConnection, on_event: object,
                   top_up: object = None) -> None:
    """The least a fast qh3 connection needs: drain the socket while readable, one batch into
    qh3, events, (top up the send buffer,) one send pass, timers from get_timer()."""
    while True:
        if top_up is not None:
            top_up()  # type: ignore[operator]
        for datagram, addr in quic.datagrams_to_send(trio.current_time()):
            sock.sendto(datagram, addr)
        timer = quic.get_timer()
        batch: list[bytes] = []
        peer = None
        with trio.move_on_at(timer if timer is not None else float("inf")):
            await trio.lowlevel.wait_readable(sock.fileno())
            while len(batch) < 256:
                try:
                    data, peer = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                batch.append(data)
        if batch and peer is not None:
            quic.receive_many_datagrams(batch, peer, trio.current_time())
        if timer is not None and trio.current_time() >= timer:
            quic.handle_timer(trio.current_time())
        while (event := quic.next_event()) is not None:
            if on_event(event):  # type: ignore[operator]
                return


def raw_socket(bind: tuple[str, int] = ("127.0.0.1", 0)) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(bind)
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
    return sock


async def raw_serve(bind: tuple[str, int] = ("127.0.0.1", 0)) -> None:
    """Serve one raw qh3 connection on `bind`: count a stream's bytes, answer the count."""
    sock = raw_socket(bind)
    print(f"{bind[0]}:{sock.getsockname()[1]}", flush=True)
    await trio.lowlevel.wait_readable(sock.fileno())
    data, addr = sock.recvfrom(65536)
    quic = QuicConnection(configuration=configuration(
        libp2p_certificate(create_new_key_pair().private_key), is_client=False, **WINDOWS),
        original_destination_connection_id=data[6:6 + data[5]])
    quic.receive_datagram(data, addr, trio.current_time())
    received = 0

    def on_event(event: object) -> bool:
        nonlocal received
        if isinstance(event, events.StreamDataReceived):
            received += len(event.data)
            if event.end_stream:
                quic.send_stream_data(event.stream_id, received.to_bytes(8, "big"), True)
        return False

    with trio.move_on_after(120):
        await raw_pump(sock, quic, on_event)


async def raw_send(address: str, size: int) -> float:
    """Seconds to send `size` bytes over one stream of a raw qh3 connection to `address` and
    hear the receiver's count (LostBytes if it is short)."""
    host, port = address.rsplit(":", 1)
    sock = raw_socket(("0.0.0.0", 0) if host != "127.0.0.1" else ("127.0.0.1", 0))
    quic = QuicConnection(configuration=configuration(
        libp2p_certificate(create_new_key_pair().private_key), is_client=True, **WINDOWS))
    quic.connect((host, int(port)), trio.current_time())
    sent = 0
    chunk = bytes(CHUNK)

    def on_event(event: object) -> bool:
        if isinstance(event, events.StreamDataReceived) and event.end_stream:
            if int.from_bytes(event.data[-8:], "big") != size:
                raise LostBytes(size - int.from_bytes(event.data[-8:], "big"))
            return True
        return False

    def top_up() -> None:
        nonlocal sent
        while sent < size and quic.get_send_buffer_size(0) < (1 << 20):
            quic.send_stream_data(0, chunk, sent + CHUNK >= size)
            sent += CHUNK

    start = time.perf_counter()
    await raw_pump(sock, quic, on_event, top_up)
    return time.perf_counter() - start


# --- py-libp2p hosts ------------------------------------------------------------------------

def libp2p_host(stack: str) -> IHost:
    identity.install()
    pair = create_new_key_pair()
    if stack == "meshnat":
        return new_host(key_pair=pair, sec_opt=identity.secure_transports(pair),
                        transports=[TCP(), QuicTransport(pair)])
    return new_host(key_pair=pair, sec_opt=identity.secure_transports(pair), enable_quic=True,
                    listen_addrs=LISTEN)


async def sink(stream: INetStream) -> None:
    total = 0
    try:
        while True:
            total += len(await stream.read(1 << 20))
    except StreamEOF:
        pass
    await stream.write(total.to_bytes(8, "big"))
    await stream.close()


async def host_serve(stack: str) -> None:
    host = libp2p_host(stack)
    async with host.run(listen_addrs=LISTEN):
        host.set_stream_handler(SINK, sink)
        (addr,) = [a for a in host.get_addrs() if "quic" in str(a)]
        print(addr, flush=True)
        await trio.sleep(300)


async def host_send(stack: str, address: str, size: int) -> float:
    host = libp2p_host(stack)
    async with host.run(listen_addrs=LISTEN):
        peer = info_from_p2p_addr(multiaddr.Multiaddr(address))
        await host.connect(peer)
        stream = await host.new_stream(peer.peer_id, [SINK])
        start = time.perf_counter()
        for _ in range(size // CHUNK):
            await stream.write(bytes(CHUNK))
        await stream.close_write()  # type: ignore[attr-defined]
        answer = b""
        while len(answer) < 8:
            answer += await stream.read(8 - len(answer))
        elapsed = time.perf_counter() - start
        await host.get_network().close()
    if int.from_bytes(answer, "big") != size:
        raise LostBytes(size - int.from_bytes(answer, "big"))
    return elapsed


# --- the run ----------------------------------------------------------------------------------

def measure(stack: str, size: int) -> float | None:
    """MB/s of one transfer, None when the stream ended with bytes missing."""
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_quic", "--serve", stack],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        address = child.stdout.readline().strip()
        try:
            if stack == "raw":
                elapsed = trio.run(raw_send, address, size)
            else:
                elapsed = trio.run(host_send, stack, address, size)
        except LostBytes as lost:
            print(f"{stack}: stream ended with {lost} bytes missing", flush=True)
            return None
    finally:
        child.kill()
        child.wait()
    return size / elapsed / 1e6


def main() -> None:
    if sys.argv[1:3] == ["--serve", "raw"] and len(sys.argv) == 4:  # the lab: raw IP:PORT
        ip, port = sys.argv[3].rsplit(":", 1)
        trio.run(raw_serve, (ip, int(port)))
        return
    if sys.argv[1:3] == ["--send", "raw"]:  # the lab: raw IP:PORT SIZE -> {"one_way": MB/s}
        size = int(sys.argv[4])
        print(json.dumps({"one_way": size / trio.run(raw_send, sys.argv[3], size) / 1e6}))
        return
    if sys.argv[1:2] == ["--serve"]:
        stack = sys.argv[2]
        trio.run(raw_serve) if stack == "raw" else trio.run(host_serve, stack)
        return
    size = int(sys.argv[1]) * 1024 * 1024 if len(sys.argv) > 1 else 50 * 1024 * 1024
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    stacks = {"raw": "qh3 raw, minimal trio driver", "meshnat": "meshnat QUIC transport (qh3)",
              "stock": "py-libp2p 0.8.1 QUIC (aioquic)"}
    rates: dict[str, list[float]] = {stack: [] for stack in stacks}
    for _ in range(runs):
        for stack in stacks:
            rate = measure(stack, size)
            if rate is not None:
                rates[stack].append(rate)
    print(f"{size >> 20} MiB over one QUIC stream, two processes, loopback, median of {runs}")
    print(row("stack", "MB/s", "ratio", "complete", "runs (MB/s)", widths=WIDTHS))
    baseline = statistics.median(rates["raw"])
    for stack, label in stacks.items():
        rate = statistics.median(rates[stack]) if rates[stack] else 0.0
        spread = "/".join(f"{r:.1f}" for r in rates[stack])
        print(row(label, f"{rate:.1f}", f"{rate / baseline:.2f}",
                  f"{len(rates[stack])}/{runs}", spread, widths=WIDTHS))


if __name__ == "__main__":
    main()
