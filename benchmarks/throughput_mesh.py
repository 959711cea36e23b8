"""The meshnat roles of throughput_node (relay, listener, dialer) on MeshNode's public API.

A listener also exposes its plain TCP server as the tunnel service `plain`; every meshnat path
is measured over a bare stream and through a tunnel to it. With `--reflector`s both ends
discover their mappings and mount a HolePuncher: the `punched` path measures the relayed
circuit first, then punches and measures the punched connection (the listener behind a NAT).
"""

from __future__ import annotations

import argparse
from functools import partial

import trio

from benchmarks.throughput_node import (
    ECHO,
    LIBP2P_PORT,
    PARALLEL,
    PLAIN_PORT,
    SINK,
    Ends,
    emit,
    libp2p_handlers,
    measure,
    plain_opener,
    plain_server,
    watched,
)
from meshnat import MeshNode, NodeConfig
from meshnat._libp2p import (
    ID,
    INetConn,
    PeerInfo,
    TProtocol,
    merge_peer_addrs,
    open_stream_on,
    parse_multiaddr,
)
from meshnat._libp2p import peer_id_of as _peer_id_of
from meshnat.discovery import DiscoveryConfig, PeerAddressDiscovery
from meshnat.discovery.mapping import discover_mapping
from meshnat.punch import HolePuncher, PunchConfig
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.traversal import TraversalService
from meshnat.tunnel import ANY_PEER, TunnelConfig, TunnelService

BIG = RelayServiceConfig(circuit_bytes=1 << 34, circuit_duration=3600, max_circuits=256,
                         max_circuits_per_peer=256, max_circuits_per_network=256)
CIRCUITS = 8
"""Idle circuits the `circuits` path opens and holds (memory per open circuit): a circuit is
a connection to the listener, which takes 8 per peer."""


TUNNELS = TunnelConfig(max_tunnels_per_peer=4 * PARALLEL)


async def run_mesh(args: argparse.Namespace) -> None:
    port = 0 if args.role == "dialer" and not args.reflector else LIBP2P_PORT
    config = NodeConfig(listen_ip=args.ip or "0.0.0.0", tcp_port=port, udp_port=port)
    async with MeshNode(config) as node, trio.open_nursery() as nursery:
        if args.role == "relay":
            await node.mount(RelayService(BIG))
            emit({"event": "ready", "addr": f"/ip4/{args.ip}/tcp/{LIBP2P_PORT}/p2p/{node.peer_id}"})
            await trio.sleep_forever()
        relay = _peer_info(args.relay)
        puncher = await _mount_puncher(node, args.reflector or [])
        client = await node.mount(RelayClient())
        tunnels = await node.mount(TunnelService(TUNNELS))
        if args.role == "listener":
            libp2p_handlers(node.host)
            await nursery.start(partial(trio.serve_tcp, plain_server, PLAIN_PORT))
            tunnels.expose("plain", ("127.0.0.1", PLAIN_PORT), allow=ANY_PEER)
            await client.reserve(relay)
            emit({"event": "ready", "peer_id": str(node.peer_id),
                  "addr": f"/ip4/{args.ip}/tcp/{LIBP2P_PORT}"})
            await trio.sleep_forever()
        peer = _peer_id(args.peer)
        if args.path == "circuits":
            circuits = [await client.dial(relay, peer) for _ in range(CIRCUITS)]
            emit({"event": "holding", "circuits": len(circuits)})
            await trio.sleep_forever()
        if args.path in ("relayed", "punched"):
            conn: INetConn = await client.dial(relay, peer)
        else:
            await node.connect(PeerInfo(peer, [parse_multiaddr(args.target)]))
            (conn, *_) = node.host.get_network().get_connections(peer)
        watch = watched(args)
        result = await measure_both(node, tunnels, conn, peer, watch)
        if args.path == "punched":
            assert puncher is not None, "--path punched needs --reflector"
            punched = await puncher.punch(peer)
            result = {"relayed": result, "punch_ms": punched.elapsed * 1e3,
                      "transport": punched.transport,
                      "punched": await measure_both(node, tunnels, punched.connection, peer,
                                                     watch)}
        emit(result)
        nursery.cancel_scope.cancel()


async def measure_both(node: MeshNode, tunnels: TunnelService, conn: INetConn, peer: ID,
                       watch: dict[str, int]) -> dict[str, object]:
    """SIZE one way and both ways, and the mixed transfers, over a bare stream on `conn`;
    then the same through a tunnel to the listener's `plain` service (`conn` is the only
    path to the peer or the one the node ranks first, so the tunnel takes it)."""

    async def opener(protocol: TProtocol) -> Ends:
        return Ends(await open_stream_on(node.host, conn, protocol, 10))

    result = await measure(partial(opener, SINK), partial(opener, ECHO), transfers=True,
                           watch=watch)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(tunnels.forward, PeerInfo(peer, []), "plain",
                                      ("127.0.0.1", 0))
        result["tunnel"] = await measure(partial(plain_opener, "127.0.0.1", port, b"s", None),
                                         partial(plain_opener, "127.0.0.1", port, b"e", None),
                                         transfers=True, watch=watch)
        nursery.cancel_scope.cancel()
    return result


async def _mount_puncher(node: MeshNode, reflectors: list[str]) -> HolePuncher | None:
    """Discovery on `reflectors`, a traversal service and a HolePuncher; None without any."""
    if not reflectors:
        return None
    known = merge_peer_addrs(reflectors)
    discovery = await node.mount(PeerAddressDiscovery(known, DiscoveryConfig(
        min_responses=min(3, len(known)))))
    mapping = await discover_mapping(discovery)
    traversals = await node.mount(TraversalService(discovery=discovery))
    return await node.mount(HolePuncher(PunchConfig(mapping=mapping.v4, mapping6=mapping.v6),
                                        discovery=discovery,
                                        traversals=traversals))


def _peer_info(addr: str) -> PeerInfo:
    text, peer = addr.rsplit("/p2p/", 1)
    return PeerInfo(_peer_id(peer), [parse_multiaddr(text)])


def _peer_id(text: str) -> ID:
    peer = _peer_id_of(text)
    assert peer is not None, text
    return peer
