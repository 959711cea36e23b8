"""Every byte sent on a stream arrives before its end, over QUIC, TCP and a relay (issue 19).

Each transfer is echoed back through meshnat's `StreamBytes` with a half-close, the way a
tunnel carries it, and compared by digest: one large stream and many short ones at once. The
answer-after-end case sends a request, half-closes, and only then gets the whole answer (an
HTTP/1.0 exchange through a tunnel): the direction still open must carry everything.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from meshnat import MeshNode, _libp2p
from meshnat._libp2p import FRAME_PAYLOAD, StreamBytes, open_stream_on
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.tunnel import TunnelConfig
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
    end = StreamBytes(await open_stream_on(client.host, conn, protocol, 10))
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
