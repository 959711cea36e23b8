"""`meshnat relay`, `listen` and `connect`: reach a peer behind a NAT, relayed then punched."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from functools import partial

import multiaddr
import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn, PeerInfo, peer_by_id
from meshnat.classify import ProbeHelperConfig, ProbeHelperService
from meshnat.cli.commands import (
    DEFAULT_PORT,
    Output,
    node_config_from_listen,
    parse_peer_id,
    serves_until_signal,
    wait_for_signal,
)
from meshnat.cli.control import serve_control
from meshnat.cli.traversal import traversal_handlers
from meshnat.connect import Connector
from meshnat.discovery import DiscoveryConfig, PeerAddressDiscovery
from meshnat.discovery.mapping import MappingHints, discover_mapping
from meshnat.echo import EchoService, echo
from meshnat.errors import MeshNatError
from meshnat.events import EventSink, MeshEvent, PunchAbandoned, ignore_events
from meshnat.mesh.dialback import DialBackService
from meshnat.node import MeshNode, NodeConfig
from meshnat.paths import PathKind
from meshnat.portmap import (
    Failed,
    Lost,
    MappingEvent,
    MappingProtocol,
    Obtained,
    PortMapConfig,
    PortMapper,
)
from meshnat.punch import HolePuncher, PunchConfig
from meshnat.records.authority import endpoint_addr
from meshnat.reflection import ReflectionService
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.rendezvous import RendezvousService
from meshnat.traversal import TraversalService

log = logging.getLogger(__name__)


@serves_until_signal
async def run_relay(args: argparse.Namespace, out: Output) -> int:
    """A public node that relays circuits, reflects addresses and helps classification."""
    config = replace(node_config_from_listen(args.listen, args.key_file, DEFAULT_PORT, args.ipv6),
                     max_connections_per_network=args.max_connections_per_network)
    limits = RelayServiceConfig(
        max_reservations=args.max_reservations,
        max_reservations_per_network=args.max_reservations_per_network,
        max_circuits=args.max_circuits, max_circuits_per_network=args.max_circuits_per_network,
        circuit_bytes=args.circuit_bytes, circuit_duration=args.circuit_duration)
    async with MeshNode(config) as node:
        for service in (RelayService(limits), ReflectionService(),
                        ProbeHelperService(ProbeHelperConfig(alt_port=args.alt_port)),
                        DialBackService()):  # a port mapping's TCP confirmation
            await node.mount(service)
        if args.rendezvous:
            await node.mount(RendezvousService())
        addrs = [str(a) for a in node.addrs]
        out.emit({"event": "ready", "peer_id": str(node.peer_id), "addrs": addrs},
                 f"relay {node.peer_id} listening on:\n  " + "\n  ".join(addrs))
        await wait_for_signal()
        out.emit({"event": "stopped"}, "stopped")
    return 0


def _relays(args: argparse.Namespace) -> list[PeerInfo]:
    """The `--relay` multiaddrs, one PeerInfo per relay."""
    return _libp2p.merge_peer_addrs(args.relay)


async def _mount_mesh(node: MeshNode, args: argparse.Namespace,
                      events: EventSink = ignore_events) -> tuple[RelayClient, HolePuncher]:
    """Discover this node's addresses (best effort), then mount the relay client and puncher."""
    discovery, mapping = await mount_discovery(node, args)
    return await mount_relay_and_puncher(node, discovery, mapping, events)


async def mount_relay_and_puncher(
        node: MeshNode, discovery: PeerAddressDiscovery, mapping: MappingHints,
        events: EventSink = ignore_events, traversals: TraversalService | None = None
) -> tuple[RelayClient, HolePuncher]:
    """Mount the relay client and the hole puncher (on `traversals` if the node has one)."""
    config = PunchConfig(mapping=mapping.v4, mapping6=mapping.v6)
    puncher = await node.mount(HolePuncher(config, discovery=discovery,
                                           traversals=traversals, events=events))
    return await node.mount(RelayClient()), puncher


async def mount_discovery(node: MeshNode, args: argparse.Namespace
                          ) -> tuple[PeerAddressDiscovery, MappingHints]:
    """Mount discovery on `args.reflector` and run one round per transport (best effort):
    the discovery, and the mapping behaviour per family those rounds suggest."""
    reflectors = _libp2p.merge_peer_addrs(args.reflector)
    config = DiscoveryConfig(min_responses=max(1, min(3, len(reflectors))))
    discovery = await node.mount(PeerAddressDiscovery(reflectors, config))
    mapping = (await discover_mapping(discovery, sorted(node.ip_versions)) if reflectors
               else MappingHints())
    return discovery, mapping


def _describe(node: MeshNode, conn: INetConn) -> dict[str, object]:
    """A connection line: `direct` or `relayed` (these lines never say `punched`)."""
    found = node.describe(conn)
    remote = found.remote
    return {"peer": str(found.peer),
            "path": PathKind.DIRECT if found.kind.is_direct else PathKind.RELAYED,
            "transport": found.transport, "remote": str(remote) if remote else None}


@serves_until_signal
async def run_listen(args: argparse.Namespace, out: Output) -> int:
    """Reserve on the relay, serve echo, print one line per inbound connection."""
    config = NodeConfig(tcp_port=args.port, udp_port=args.port, key_file=args.key_file,
                        listen_ip6="::" if args.ipv6 else None)
    async with MeshNode(config) as node:
        discovery, mapping = await mount_discovery(node, args)
        traversals = await node.mount(TraversalService(discovery=discovery))
        relay_client, _ = await mount_relay_and_puncher(node, discovery, mapping,
                                                        traversals=traversals)
        await node.mount(EchoService())
        ready = trio.Event()  # mapping events are printed after the ready line
        mapped = await _map_ports(node, args, out, ready) if args.port_mapping else []
        relays = _relays(args)
        relay_ids = {relay.peer_id for relay in relays}
        with _libp2p.connection_reports(node.host, 64) as receive:
            circuits = await relay_client.reserve_best(relays, count=args.keep_relays)
            addrs = [*(str(c) for c in circuits), *(str(a) for a in node.addrs)]
            out.emit({"event": "ready", "peer_id": str(node.peer_id), "addrs": addrs,
                      "mapped": mapped},
                     f"listening as {node.peer_id} via " + ", ".join(map(str, circuits))
                     + "".join(f"\nmapped: {m}" for m in mapped))
            ready.set()
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    await wait_for_signal()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                if args.control is not None:
                    connector = await node.mount(Connector(relays=relays,
                                                           relay_client=relay_client))
                    await nursery.start(partial(
                        serve_control, args.control,
                        traversal_handlers(traversals, connector)))
                async for conn in receive:
                    if conn.muxed_conn.peer_id not in relay_ids:
                        facts = _describe(node, conn)
                        out.emit({"event": "connection", **facts},
                                 f"{facts['peer']} connected, {facts['path']} "
                                 f"over {facts['transport']}")
    return 0


async def _map_ports(node: MeshNode, args: argparse.Namespace, out: Output,
                     ready: trio.Event) -> list[str]:
    """Mount a PortMapper (reflectors confirm); the mapped addresses confirmed within
    `--port-mapping-wait` seconds, as multiaddrs with this node's peer id. Every mapping
    change once `ready` is set is printed as a `mapping` event."""
    protocols = tuple(MappingProtocol(p) for p in args.port_mapping_protocol or MappingProtocol)

    def on_event(event: MappingEvent) -> None:
        if not ready.is_set():
            return
        facts: dict[str, object] = {"event": "mapping", "change": type(event).__name__.lower()}
        if isinstance(event, Obtained | Lost):
            facts.update(protocol=event.mapping.protocol, transport=event.mapping.transport,
                         external=str(event.mapping.external))
        if isinstance(event, Lost | Failed):
            facts["reason"] = event.reason
        out.emit(facts, " ".join(f"{v}" for v in facts.values()))

    mapper = await node.mount(PortMapper(PortMapConfig(protocols=protocols),
                                         helpers=_libp2p.merge_peer_addrs(args.reflector),
                                         on_event=on_event))
    with trio.move_on_after(args.port_mapping_wait):
        await mapper.wait_confirmed("udp")
    return [f"{endpoint_addr(m.transport, str(m.external.ip), m.external.port)}"
            f"/p2p/{node.peer_id}" for m in mapper.confirmed()]


async def run_connect(args: argparse.Namespace, out: Output) -> int:
    """Relay first (always works), then punch a direct path; echo over the final one."""
    peer = parse_peer_id(args.peer_id)
    config = NodeConfig(tcp_port=args.port, udp_port=args.port, key_file=args.key_file,
                        listen_ip6="::" if args.ipv6 else None)
    abandoned: list[PunchAbandoned] = []

    def on_event(event: MeshEvent) -> None:
        if isinstance(event, PunchAbandoned):
            abandoned.append(event)

    async with MeshNode(config) as node:
        relay_client, puncher = await _mount_mesh(node, args, events=on_event)
        connector = await node.mount(Connector(
            relays=_relays(args), relay_client=relay_client,
            puncher=puncher if args.wait_direct > 0 else None, events=on_event))
        mapped = [multiaddr.Multiaddr(a) for a in args.mapped]
        path = await connector.connect(peer_by_id(peer), mapped=mapped)
        result: dict[str, object] = {"time_to_path_ms": _ms(path.time_to_path),
                                     "relayed_rtt_ms": None if path.rtt is None
                                     or path.kind is not PathKind.RELAYED else _ms(path.rtt)}
        punched = None
        if args.wait_direct > 0 and await connector.wait_direct(peer, args.wait_direct):
            punched = connector.last_punch(peer)
            path = await connector.connect(peer_by_id(peer))  # the direct one now
        echo_started = trio.current_time()
        answer = await echo(node, peer_by_id(peer), b"meshnat echo", connection=path.connection)
        result.update({k: v for k, v in path.to_json().items()
                       if k not in ("time_to_path_ms", "time_to_direct_ms")},
                      rtt_ms=_ms(trio.current_time() - echo_started),
                      echo_ok=answer == b"meshnat echo",
                      punch_error=abandoned[-1].reason if abandoned else None)
        if punched is not None:
            result.update(path=PathKind.PUNCHED, time_to_direct_ms=_ms(punched.elapsed),
                          punch=punched.to_json())
        out.emit(result, f"{peer}: {result['path']} over {result['transport']}, "
                         f"echo {'ok' if result['echo_ok'] else 'FAILED'} "
                         f"in {result['rtt_ms']} ms")
        ok = bool(result["echo_ok"])
        if args.hold:
            ok = await _echo_on_each_line(node, peer, path.connection, out) and ok
        return 0 if ok else 1


async def _echo_on_each_line(node: MeshNode, peer: ID, conn: INetConn, out: Output) -> bool:
    """Echo over `conn` once per stdin line until end of input; False if any echo failed."""
    ok = True
    stdin = trio.wrap_file(sys.stdin)
    while await stdin.readline():
        started = trio.current_time()
        try:
            answer = await echo(node, peer_by_id(peer), b"meshnat echo", connection=conn)
        except MeshNatError as exc:
            out.emit({"echo_ok": False, "error": str(exc)}, f"echo failed: {exc}")
            ok = False
            continue
        facts = {"echo_ok": answer == b"meshnat echo", **_describe(node, conn),
                 "rtt_ms": _ms(trio.current_time() - started)}
        ok = ok and bool(facts["echo_ok"])
        out.emit(facts, f"echo {'ok' if facts['echo_ok'] else 'FAILED'} over {facts['path']}")
    return ok


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)
