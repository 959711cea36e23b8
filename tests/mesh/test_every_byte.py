"""Every byte sent on a stream arrives before its end, over QUIC, TCP, a relay and a punched
path, on bare streams and through whole tunnels (issue 19).

Each transfer is echoed back through meshnat's `StreamBytes` with a half-close, the way a
tunnel carries it, and compared by digest: one large stream and many short ones at once. The
answer-after-end case sends a request, half-closes, and only then gets the whole answer (an
HTTP/1.0 exchange through a tunnel): the direction still open must carry everything.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from meshnat import MeshNode, _libp2p
from meshnat._libp2p import FRAME_PAYLOAD, StreamBytes, open_stream_on
from meshnat.events import MeshEvent, TunnelClosed
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.tunnel import ANY_PEER, TunnelConfig, TunnelService
from tests.mesh.test_punch import relayed_pair
from tests.support.fake_reflectors import nodes

ECHO = TProtocol("/meshnat-test/echo/1")
ANSWER_AFTER_END = TProtocol("/meshnat-test/answer-after-end/1")
CHUNK = 65536


async def echo(stream: INetStream) -> None:
    end = StreamBytes(stream)
    while data := await end.receive_some(CHUNK):
        await end.send_all(data)
    await end.send_eof()


async def answer_after_end(stream: INetStream) -> None:
    """Reads the request to its end, then answers with its digest and the request again."""
    end = StreamBytes(stream)
    request = bytearray()
    while data := await end.receive_some(CHUNK):
        request += data
    await end.send_all(hashlib.sha256(request).digest())
    for at in range(0, len(request), CHUNK):
        await end.send_all(bytes(request[at:at + CHUNK]))
    await end.send_eof()


async def round_trip(client: MeshNode, server: MeshNode, payload: bytes,
                     protocol: TProtocol = ECHO) -> str:
    (conn,) = client.host.get_network().get_connections(server.peer_id)
    return await stream_round_trip(
        StreamBytes(await open_stream_on(client.host, conn, protocol, 10)), payload)


async def stream_round_trip(end: StreamBytes, payload: bytes) -> str:
    """`payload` written to `end` and half-closed; the digest of what came back."""
    digest = hashlib.sha256()

    async def send() -> None:
        for at in range(0, len(payload), CHUNK):
            await end.send_all(payload[at:at + CHUNK])
        await end.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while data := await end.receive_some(CHUNK):
            digest.update(data)
    await end.aclose()
    return digest.hexdigest()


@pytest.mark.parametrize("transport", ["quic-v1", "tcp"])
async def test_a_large_stream_and_many_short_ones_arrive_whole(transport: str) -> None:
    rng = random.Random(19)
    large = rng.randbytes(4 * 1024 * 1024)
    short = [rng.randbytes(rng.randrange(1, 40_000)) for _ in range(120)]
    digests: dict[int, str] = {}
    with trio.fail_after(120):  # a hang guard: the figures belong to benchmarks/
        async with nodes(2) as (a, b):
            b.host.set_stream_handler(ECHO, echo)
            await a.connect(PeerInfo(b.peer_id, [x for x in b.addrs if f"/{transport}/" in str(x)]))
            (conn,) = a.host.get_network().get_connections(b.peer_id)
            assert _libp2p.transport_of(conn) == ("udp" if transport == "quic-v1" else "tcp")

            async def one(index: int, payload: bytes) -> None:
                digests[index] = await round_trip(a, b, payload)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, -1, large)
                for index, payload in enumerate(short):
                    nursery.start_soon(one, index, payload)
    assert digests[-1] == hashlib.sha256(large).hexdigest()
    assert [digests[i] for i in range(len(short))] == [
        hashlib.sha256(p).hexdigest() for p in short]


async def test_a_relayed_stream_carries_everything_both_ways_and_after_a_half_close() -> None:
    rng = random.Random(20)
    large = rng.randbytes(3 * 1024 * 1024)
    short = [rng.randbytes(rng.randrange(1, 40_000)) for _ in range(40)]
    results: dict[tuple[str, int], str] = {}
    with trio.fail_after(120):  # a hang guard
        async with nodes(3) as (relay, a, b):
            await relay.mount(RelayService(RelayServiceConfig(circuit_bytes=1 << 30)))
            b.host.set_stream_handler(ECHO, echo)
            b.host.set_stream_handler(ANSWER_AFTER_END, answer_after_end)
            await (await b.mount(RelayClient())).reserve(relay.peer_info())
            await (await a.mount(RelayClient())).dial(relay.peer_info(), b.peer_id)

            async def one(kind: TProtocol, index: int, payload: bytes) -> None:
                results[str(kind), index] = await round_trip(a, b, payload, kind)

            async with trio.open_nursery() as nursery:
                for kind in (ECHO, ANSWER_AFTER_END):
                    nursery.start_soon(one, kind, -1, large)
                    for index, payload in enumerate(short):
                        nursery.start_soon(one, kind, index, payload)
    for index, payload in [(-1, large), *enumerate(short)]:
        assert results[str(ECHO), index] == hashlib.sha256(payload).hexdigest()
        answer = hashlib.sha256(payload).digest() + payload
        assert results[str(ANSWER_AFTER_END), index] == hashlib.sha256(answer).hexdigest()


def test_a_tunnel_reads_what_one_yamux_frame_in_one_noise_message_carries() -> None:
    assert TunnelConfig().chunk_size == FRAME_PAYLOAD == 65_519 - 12


# --- mixed transfers through whole tunnels and over a punched path -----------------------------

MIXED = 200
"""Transfers per path kind here, five kinds: 1,000 in CI (bench_throughput_lab runs 1,000 per
path and kind in the NAT lab, up to 1 MiB each)."""


def mixed_sizes(seed: int) -> list[bytes]:
    """MIXED payloads of 1 B .. 256 KiB, log-uniform (most small, a few large)."""
    rng = random.Random(seed)
    return [rng.randbytes(int(2 ** rng.uniform(0, 18))) for _ in range(MIXED)]


async def tcp_echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(CHUNK):
            await stream.send_all(data)
        await stream.send_eof()


async def tcp_round_trip(port: int, payload: bytes) -> str:
    """`payload` through a local TCP port and back, half-closed after the last byte."""
    digest = hashlib.sha256()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:

        async def send() -> None:
            for at in range(0, len(payload), CHUNK):
                await stream.send_all(payload[at:at + CHUNK])
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await stream.receive_some(CHUNK):
                digest.update(data)
    return digest.hexdigest()


async def all_arrive(payloads: list[bytes], one: Callable[[bytes], Awaitable[str]]) -> list[str]:
    """Each payload's echoed digest, 16 transfers at a time."""
    digests = [""] * len(payloads)
    limiter = trio.CapacityLimiter(16)

    async def run(index: int) -> None:
        async with limiter:
            digests[index] = await one(payloads[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(payloads)):
            nursery.start_soon(run, index)
    return digests


def digests_of(payloads: list[bytes]) -> list[str]:
    return [hashlib.sha256(p).hexdigest() for p in payloads]


async def tunnel_transfers(a: MeshNode, b: MeshNode, payloads: list[bytes],
                           events: list[MeshEvent]) -> list[str]:
    """`payloads` from a local TCP client through a's forward, a tunnel, b's expose, to a
    TCP echo server on b's side and back; `events` gets a's TunnelClosed reports."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, tcp_echo, 0, host="127.0.0.1"))
        server = await b.mount(TunnelService(TunnelConfig(max_tunnels_per_peer=64)))
        server.expose("echo", ("127.0.0.1", listeners[0].socket.getsockname()[1]),
                      allow=ANY_PEER)
        client = await a.mount(TunnelService(events=events.append))
        _, port = await nursery.start(client.forward, PeerInfo(b.peer_id, []), "echo")
        digests = await all_arrive(payloads, partial(tcp_round_trip, port))
        nursery.cancel_scope.cancel()
    return digests


@pytest.mark.parametrize("path", ["quic-v1", "tcp", "relayed"])
async def test_mixed_transfers_through_whole_tunnels_arrive_whole(path: str) -> None:
    payloads = mixed_sizes(21)
    events: list[MeshEvent] = []
    with trio.fail_after(180):  # a hang guard
        async with nodes(3) as (relay, a, b):
            if path == "relayed":
                await relay.mount(RelayService(RelayServiceConfig(circuit_bytes=1 << 30)))
                await (await b.mount(RelayClient())).reserve(relay.peer_info())
                await (await a.mount(RelayClient())).dial(relay.peer_info(), b.peer_id)
            else:
                await a.connect(PeerInfo(b.peer_id, [x for x in b.addrs if f"/{path}/" in str(x)]))
            digests = await tunnel_transfers(a, b, payloads, events)
    assert digests == digests_of(payloads)
    closed = [e for e in events if isinstance(e, TunnelClosed)]
    assert len(closed) == MIXED
    assert {e.path for e in closed} == {"relayed" if path == "relayed" else "direct"}


async def test_mixed_transfers_over_a_punched_path_arrive_whole() -> None:
    payloads, through_tunnel = mixed_sizes(22), mixed_sizes(23)
    events: list[MeshEvent] = []
    with trio.fail_after(180):  # a hang guard
        async with AsyncExitStack() as stack:
            _, a, b, puncher = await relayed_pair(stack)
            b.host.set_stream_handler(ECHO, echo)
            punched = await puncher.punch(b.peer_id)

            async def one(payload: bytes) -> str:
                end = StreamBytes(await open_stream_on(a.host, punched.connection, ECHO, 10))
                return await stream_round_trip(end, payload)

            digests = await all_arrive(payloads, one)
            tunnelled = await tunnel_transfers(a, b, through_tunnel, events)
    assert digests == digests_of(payloads)
    assert tunnelled == digests_of(through_tunnel)
    closed = [e for e in events if isinstance(e, TunnelClosed)]
    assert len(closed) == MIXED and {e.path for e in closed} == {"punched"}
