"""Every byte sent on a stream arrives before its end, over QUIC and over TCP (issue 19).

Each transfer is echoed back through meshnat's `StreamBytes` with a half-close, the way a
tunnel carries it, and compared by digest: one large stream and many short ones at once.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from meshnat import MeshNode
from meshnat._libp2p import FRAME_PAYLOAD, StreamBytes, open_stream_on
from meshnat.tunnel import TunnelConfig
from tests.support.fake_reflectors import nodes

ECHO = TProtocol("/meshnat-test/echo/1")
CHUNK = 65536


async def echo(stream: INetStream) -> None:
    end = StreamBytes(stream)
    while data := await end.receive_some(CHUNK):
        await end.send_all(data)
    await end.send_eof()


async def round_trip(client: MeshNode, server: MeshNode, payload: bytes) -> str:
    (conn,) = client.host.get_network().get_connections(server.peer_id)
    end = StreamBytes(await open_stream_on(client.host, conn, ECHO, 10))
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
            assert ("QUIC" in type(conn.muxed_conn).__name__) == (transport == "quic-v1")

            async def one(index: int, payload: bytes) -> None:
                digests[index] = await round_trip(a, b, payload)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, -1, large)
                for index, payload in enumerate(short):
                    nursery.start_soon(one, index, payload)
    assert digests[-1] == hashlib.sha256(large).hexdigest()
    assert [digests[i] for i in range(len(short))] == [
        hashlib.sha256(p).hexdigest() for p in short]


def test_a_tunnel_reads_what_one_yamux_frame_in_one_noise_message_carries() -> None:
    assert TunnelConfig().chunk_size == FRAME_PAYLOAD == 65_519 - 12
