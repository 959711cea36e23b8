"""`meshnat expose` and `meshnat forward`: a local TCP service reachable through any NAT."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import trio

from meshnat import _libp2p
from meshnat._libp2p import PeerInfo
from meshnat.cli.commands import (
    Output,
    parse_peer_id,
    serves_until_signal,
    wait_for_signal,
)
from meshnat.cli.connect import _mount_mesh, _relays
from meshnat.connect import Connector
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError, MeshNatError
from meshnat.events import EventSink, MeshEvent, PathEstablished, PathUpgraded, TunnelClosed
from meshnat.node import MeshNode, NodeConfig
from meshnat.paths import PathKind
from meshnat.tunnel import ANY_PEER, TunnelConfig, TunnelService

log = logging.getLogger(__name__)


def add_tunnel_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `expose` and `forward` on the `meshnat` parser."""
    defaults = TunnelConfig()

    def shared(p: argparse.ArgumentParser) -> None:
        p.add_argument("--relay", action="append", default=[], metavar="MULTIADDR",
                       help="a relay's multiaddr ending in /p2p/<peer id> (repeat)")
        p.add_argument("--reflector", action="append", default=[], metavar="MULTIADDR",
                       help="reflectors for address discovery before punching (repeat)")
        p.add_argument("--port", type=int, default=0, help="local TCP and UDP port of the node")
        p.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout,
                       help="seconds without traffic before a tunnel closes (default %(default)s)")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.add_argument("--key-file", type=Path, help="Ed25519 identity file (created if absent)")
        p.add_argument("--ipv6", action="store_true",
                       help="dual stack: listen on [::] too, on the same ports")

    p = sub.add_parser("expose", help="let allowed peers reach a local TCP service by name")
    p.add_argument("name", help="service name peers ask for (letters, digits, . _ -)")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the local TCP service")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--allow", action="append", default=[], metavar="PEER_ID",
                     help="a peer id that may open tunnels (repeat)")
    who.add_argument("--allow-any", action="store_true", help="let every peer open tunnels")
    p.add_argument("--max-tunnels", type=int, default=defaults.max_tunnels,
                   help="tunnels served at once (default %(default)s)")
    p.add_argument("--max-tunnels-per-peer", type=int, default=defaults.max_tunnels_per_peer,
                   help="tunnels one peer may hold open (default %(default)s)")
    p.add_argument("--connect-timeout", type=float, default=defaults.connect_timeout,
                   help="seconds to wait for the local service (default %(default)s)")
    shared(p)
    p.set_defaults(run=run_expose)

    p = sub.add_parser("forward", help="a local TCP port that reaches a peer's exposed service")
    p.add_argument("peer_id", help="the peer running `meshnat expose`")
    p.add_argument("name", help="the service name it exposes")
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="local address to accept clients on (e.g. 127.0.0.1:8080)")
    p.add_argument("--peer-addr", action="append", default=[], metavar="MULTIADDR",
                   help="a direct address of the peer ending in /p2p/<peer id> (repeat)")
    p.add_argument("--max-connections", type=int, default=defaults.max_local_connections,
                   help="local connections served at once (default %(default)s)")
    shared(p)
    p.set_defaults(run=run_forward)


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{flag} needs HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _describe(event: MeshEvent, tunnel_event: str) -> tuple[dict[str, object], str] | None:
    match event:
        case TunnelClosed():
            facts = event.to_json()
            return ({"event": tunnel_event, **facts},
                    f"{event.peer} {event.service}: {event.outcome} over {event.path}, "
                    f"{event.bytes_out} B out, {event.bytes_in} B in, "
                    f"{facts['duration_ms']} ms")
        case PathEstablished():
            return ({"event": "path", "peer": event.peer, "path": event.kind,
                     "transport": event.transport}, f"{event.peer}: {event.kind} path")
        case PathUpgraded():
            return ({"event": "path", "peer": event.peer, "path": PathKind.PUNCHED,
                     "transport": event.transport, "remote": str(event.remote)},
                    f"{event.peer}: punched path to {event.remote}")
    return None


async def _print_until_signal(out: Output, receive: trio.MemoryReceiveChannel[MeshEvent],
                              tunnel_event: str) -> None:
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            await wait_for_signal()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signal)
        paths: dict[str, object] = {}  # a path line only when a peer's path changes
        async for event in receive:
            described = _describe(event, tunnel_event)
            if described is None:
                continue
            facts = described[0]
            if facts["event"] == "path":
                if paths.get(str(facts["peer"])) == facts["path"]:
                    continue
                paths[str(facts["peer"])] = facts["path"]
            out.emit(*described)


def _event_channel() -> tuple[trio.MemorySendChannel[MeshEvent],
                              trio.MemoryReceiveChannel[MeshEvent]]:
    return trio.open_memory_channel[MeshEvent](1024)


def _sink(send: trio.MemorySendChannel[MeshEvent]) -> EventSink:
    def sink(event: MeshEvent) -> None:
        try:
            send.send_nowait(event)
        except trio.WouldBlock:  # the terminal is slower than the tunnels: drop the line
            log.debug("cli: event dropped: %s", event)

    return sink


@serves_until_signal
async def run_expose(args: argparse.Namespace, out: Output) -> int:
    """Expose `--to` as NAME to the allowed peers; print one line per tunnel."""
    target = _host_port(args.to, "--to")
    allow = ANY_PEER if args.allow_any else {parse_peer_id(p) for p in args.allow}
    config = TunnelConfig(max_tunnels=args.max_tunnels,
                          max_tunnels_per_peer=args.max_tunnels_per_peer,
                          connect_timeout=args.connect_timeout, idle_timeout=args.idle_timeout)
    send, receive = _event_channel()
    sink = _sink(send)
    node_config = NodeConfig(tcp_port=args.port, udp_port=args.port, key_file=args.key_file,
                             listen_ip6="::" if args.ipv6 else None)
    async with MeshNode(node_config) as node:
        relay_client, _ = await _mount_mesh(node, args)  # the puncher labels its paths
        tunnels = await node.mount(TunnelService(config, events=sink))
        tunnels.expose(args.name, target, allow=allow)
        addrs = [str(a) for a in node.addrs]
        if args.relay:
            circuits = await relay_client.reserve_best(_relays(args), count=len(args.relay))
            addrs[:0] = [str(c) for c in circuits]
        out.emit({"event": "ready", "peer_id": str(node.peer_id), "addrs": addrs,
                  "service": args.name},
                 f"exposing {args.name} ({args.to}) as {node.peer_id} on:\n  "
                 + "\n  ".join(addrs))
        await _print_until_signal(out, receive, "tunnel")
        out.emit({"event": "stopped"}, "stopped")
    return 0


@serves_until_signal
async def run_forward(args: argparse.Namespace, out: Output) -> int:
    """Listen on `--listen`; tunnel each local connection to the peer's NAME."""
    peer = parse_peer_id(args.peer_id)
    listen = _host_port(args.listen, "--listen")
    addrs = []
    for text in args.peer_addr:
        info = _libp2p.parse_peer_addr(text)
        if info.peer_id != peer:
            raise ConfigError(f"--peer-addr {text} is not an address of {peer}")
        addrs.extend(info.addrs)
    if not addrs and not args.relay:
        raise ConfigError("give --relay or --peer-addr: there is no other way to the peer")
    target = PeerInfo(peer, addrs)
    config = TunnelConfig(max_local_connections=args.max_connections,
                          idle_timeout=args.idle_timeout)
    send, receive = _event_channel()
    sink = _sink(send)
    node_config = NodeConfig(tcp_port=args.port, udp_port=args.port, key_file=args.key_file,
                             listen_ip6="::" if args.ipv6 else None)
    async with MeshNode(node_config) as node:
        relay_client, puncher = await _mount_mesh(node, args, events=sink)
        connector = await node.mount(Connector(
            relays=_relays(args), relay_client=relay_client,
            puncher=puncher, events=sink))
        tunnels = await node.mount(TunnelService(config, connector=connector, events=sink))
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(tunnels.forward, target, args.name, listen)
            bound = str(Endpoint.parse(f"{host}:{port}"))
            out.emit({"event": "ready", "listen": bound, "peer": str(peer),
                      "service": args.name}, f"forwarding {bound} to {peer} {args.name}")

            async def warm_up() -> None:
                """Find the path now, so the first client does not wait and a punch starts."""
                try:
                    await connector.connect(target)
                except MeshNatError as exc:  # each local connection tries again
                    log.info("forward: %s not reachable yet: %s", peer, exc)

            nursery.start_soon(warm_up)
            await _print_until_signal(out, receive, "connection")
            nursery.cancel_scope.cancel()
        out.emit({"event": "stopped"}, "stopped")
    return 0
