"""The meshnat roles of throughput_node (relay, listener, dialer) on MeshNode's public API."""

from __future__ import annotations

import argparse
from functools import partial

import trio

from benchmarks.throughput_node import (
    ECHO,
    LIBP2P_PORT,
    PLAIN_PORT,
    SINK,
    Ends,
    emit,
    libp2p_handlers,
    measure,
    plain_server,
)
from meshnat import MeshNode, NodeConfig
from meshnat._libp2p import ID, INetConn, PeerInfo, TProtocol, open_stream_on, parse_multiaddr
from meshnat._libp2p import peer_id_of as _peer_id_of
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig

BIG = RelayServiceConfig(circuit_bytes=1 << 34, circuit_duration=3600, max_circuits=256,
                         max_circuits_per_peer=256, max_circuits_per_network=256)
CIRCUITS = 8
"""Idle circuits the `circuits` path opens and holds (memory per open circuit): a circuit is
a connection to the listener, which takes 8 per peer."""


async def run_mesh(args: argparse.Namespace) -> None:
    port = 0 if args.role == "dialer" else LIBP2P_PORT
    config = NodeConfig(listen_ip=args.ip or "0.0.0.0", tcp_port=port)
    async with MeshNode(config) as node, trio.open_nursery() as nursery:
        if args.role == "relay":
            await node.mount(RelayService(BIG))
            emit({"event": "ready", "addr": f"/ip4/{args.ip}/tcp/{LIBP2P_PORT}/p2p/{node.peer_id}"})
            await trio.sleep_forever()
        relay = _peer_info(args.relay)
        client = await node.mount(RelayClient())
        if args.role == "listener":
            libp2p_handlers(node.host)
            await nursery.start(partial(trio.serve_tcp, plain_server, PLAIN_PORT))
            await client.reserve(relay)
            emit({"event": "ready", "peer_id": str(node.peer_id),
                  "addr": f"/ip4/{args.ip}/tcp/{LIBP2P_PORT}"})
            await trio.sleep_forever()
        peer = _peer_id(args.peer)
        if args.path == "circuits":
            circuits = [await client.dial(relay, peer) for _ in range(CIRCUITS)]
            emit({"event": "holding", "circuits": len(circuits)})
            await trio.sleep_forever()
        if args.path == "relayed":
            conn: INetConn = await client.dial(relay, peer)
        else:
            await node.connect(PeerInfo(peer, [parse_multiaddr(args.target)]))
            (conn, *_) = node.host.get_network().get_connections(peer)

        async def opener(protocol: TProtocol) -> Ends:
            return Ends(await open_stream_on(node.host, conn, protocol, 10))

        emit(await measure(partial(opener, SINK), partial(opener, ECHO), transfers=True))
        nursery.cancel_scope.cancel()


def _peer_info(addr: str) -> PeerInfo:
    text, peer = addr.rsplit("/p2p/", 1)
    return PeerInfo(_peer_id(peer), [parse_multiaddr(text)])


def _peer_id(text: str) -> ID:
    peer = _peer_id_of(text)
    assert peer is not None, text
    return peer
