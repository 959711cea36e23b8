"""Interop: meshnat's Yamux and Noise channel against a stock py-libp2p 0.8.1 host's own.

The stock host is `stock_py_libp2p.py`, a process of its own that imports no meshnat (so its
Yamux and Noise are py-libp2p's). Streams go both ways: meshnat dials it and echoes a large
stream and many short ones through it; it dials meshnat and echoes one through meshnat.
Every transfer is compared by digest.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path
from typing import cast

import trio
from libp2p.peer.id import ID

from meshnat import MeshNode
from meshnat._libp2p import PeerInfo, parse_multiaddr
from meshnat._libp2p.yamux import Yamux
from tests.interop.stock_py_libp2p import echo
from tests.mesh.test_every_byte import ECHO, round_trip
from tests.support.fake_reflectors import nodes
from tests.support.jsnode import process, read_json_line

SCRIPT = Path(__file__).with_name("stock_py_libp2p.py")


async def test_meshnat_streams_through_a_stock_py_libp2p_host_arrive_whole() -> None:
    rng = random.Random(21)
    payloads = [rng.randbytes(2 * 1024 * 1024)] + [rng.randbytes(rng.randrange(1, 30_000))
                                                  for _ in range(30)]
    with process([sys.executable, str(SCRIPT), "serve"]) as proc:
        ready = await trio.to_thread.run_sync(read_json_line, proc, "stock host", 30.0)
        with trio.fail_after(60):
            async with nodes(1) as (node,):
                stock = PeerInfo(ID.from_base58(str(ready["peer_id"])),
                                 [parse_multiaddr(str(ready["addr"]))])
                await node.connect(stock)
                (conn,) = node.host.get_network().get_connections(stock.peer_id)
                assert type(conn.muxed_conn) is Yamux
                digests: dict[int, str] = {}

                async def one(index: int, payload: bytes) -> None:
                    digests[index] = await round_trip(node, cast(MeshNode, _Remote(stock)), payload)

                async with trio.open_nursery() as nursery:
                    for index, payload in enumerate(payloads):
                        nursery.start_soon(one, index, payload)
    assert [digests[i] for i in range(len(payloads))] == [
        hashlib.sha256(p).hexdigest() for p in payloads]


async def test_a_stock_py_libp2p_host_streams_through_meshnat_whole() -> None:
    size = 3 * 1024 * 1024
    with trio.fail_after(90):
        async with nodes(1) as (node,):
            node.host.set_stream_handler(ECHO, echo)
            tcp = next(a for a in node.peer_info().addrs if "/tcp/" in str(a))
            target = f"{tcp}/p2p/{node.peer_id}"
            with process([sys.executable, str(SCRIPT), "dial", target, str(size)]) as proc:
                result = await trio.to_thread.run_sync(read_json_line, proc, "stock dialer", 60.0)
    assert result == {"sent": size, "received": size, "match": True,
                      "muxer": "libp2p.stream_muxer.yamux.yamux"}


class _Remote:
    """What `round_trip` needs of the server side: its peer id."""

    def __init__(self, info: PeerInfo) -> None:
        self.peer_id = info.peer_id
