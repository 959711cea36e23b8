"""`meshnat chat NETWORK`: find the network's members at a rendezvous point, reach each one
(direct, punched or relayed) and exchange lines of text.

Every line read from stdin is sent to every connected member, so the command can be scripted;
`--interactive` adds a prompt and leaves the network at end of input. Without it, end of input
only stops sending: the node stays (and keeps receiving) until SIGINT or SIGTERM. Once two
members are connected the rendezvous point (and the relay, once the path is direct) may go away.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

import trio

from meshnat import _libp2p
from meshnat.chat.events import (
    ChatEvent,
    LineHeard,
    LineSent,
    MemberConnected,
    MemberLeft,
    MemberPunched,
    MemberUnreachable,
    SendFailed,
)
from meshnat.chat.network import ChatNetwork, ChatNetworkConfig, check_network_name
from meshnat.cli.commands import Output, serves_until_signal, wait_for_signal
from meshnat.cli.connect import mount_discovery, mount_relay_and_puncher
from meshnat.connect import Connector
from meshnat.errors import ConfigError, MeshNatError
from meshnat.node import MeshNode, NodeConfig
from meshnat.portmap import PortMapper
from meshnat.records import NatSummary, RecordAuthority, RecordConfig
from meshnat.rendezvous import RendezvousClient

log = logging.getLogger(__name__)


def _text(event: ChatEvent | LineSent | SendFailed) -> str:
    """The line `meshnat chat` prints without `--json`."""
    match event:
        case MemberConnected():
            return f"{event.member.name} connected ({event.path})"
        case MemberPunched():
            return f"{event.member.name} now punched through"
        case MemberUnreachable():
            return f"cannot reach {event.member.name}: {event.error}"
        case MemberLeft():
            return f"{event.member.name} left ({event.reason})"
        case LineHeard():
            return f"[{event.member.name} via {event.path}] {event.text}"
        case SendFailed():
            return f"could not send to {event.member.name}: {event.error}"
        case LineSent():
            return f"(sent to {', '.join(d.member.name for d in event.to) or 'nobody yet'})"


async def _read_lines(network: ChatNetwork, out: Output, interactive: bool,
                      done: trio.Event) -> None:
    """Send each stdin line; at end of input, leave only when interactive."""
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        # abandoned on cancel: a thread blocked in readline must not hold up leaving
        # (trio-typing's stubs predate `abandon_on_cancel`, see docs/design.md)
        line: str = await trio.to_thread.run_sync(  # type: ignore[call-arg]
            sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            if interactive:
                done.set()
            return
        if text := line.rstrip("\r\n"):
            try:
                sent = await network.say(text)
            except ConfigError as exc:
                out.emit({"event": "error", "error": str(exc)}, f"not sent: {exc}")
                continue
            for failure in sent.failed:
                out.emit(failure.to_json(), _text(failure))
            out.emit(sent.to_json(), _text(sent))


def add_chat_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                    common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `meshnat chat` (kept here so the parser module needs one line for it)."""
    p = sub.add_parser("chat", help="chat with the members of a network, found by its name")
    p.add_argument("network", help="the network name (1-64 of A-Z a-z 0-9 . _ -)")
    p.add_argument("--rendezvous", required=True, metavar="MULTIADDR",
                   help="a rendezvous point's multiaddr ending in /p2p/<peer id>")
    p.add_argument("--relay", action="append", default=[], metavar="MULTIADDR",
                   help="a relay to reserve on and to reach members through (repeat)")
    p.add_argument("--reflector", action="append", default=[], metavar="MULTIADDR",
                   help="reflectors for address discovery (repeat)")
    p.add_argument("--name", help="display name shown to the others (default: end of peer id)")
    p.add_argument("--interactive", action="store_true",
                   help="show a prompt; end of input leaves the network")
    p.add_argument("--port", type=int, default=0, help="local TCP and UDP port")
    p.add_argument("--lookup-interval", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between rendezvous lookups (default %(default)s)")
    p.add_argument("--publish-local", action="store_true",
                   help="also publish interface addresses (members on one LAN or loopback)")
    p.add_argument("--port-mapping", action="store_true",
                   help="ask the router to map the listen ports (PCP, NAT-PMP, UPnP-IGD) and "
                        "publish the mappings a reflector's dial-back confirms (first rung "
                        "for the other members)")
    common(p)
    p.set_defaults(run=run_chat)


@serves_until_signal
async def run_chat(args: argparse.Namespace, out: Output) -> int:
    name = check_network_name(args.network)
    (rendezvous,) = _libp2p.merge_peer_addrs([args.rendezvous])
    relays = _libp2p.merge_peer_addrs(args.relay)
    config = NodeConfig(tcp_port=args.port, udp_port=args.port, key_file=args.key_file,
                        listen_ip6="::" if args.ipv6 else None)
    async with MeshNode(config) as node:
        discovery, mapping = await mount_discovery(node, args)
        relay_client, puncher = await mount_relay_and_puncher(node, discovery, mapping)
        connector = await node.mount(Connector(relays=relays, relay_client=relay_client,
                                               puncher=puncher))
        authority = await node.mount(RecordAuthority(
            RecordConfig(name=args.name, publish_local=args.publish_local), discovery=discovery))
        authority.set_nat(NatSummary(mapping=mapping.v4))
        if args.port_mapping:
            await node.mount(PortMapper(helpers=_libp2p.merge_peer_addrs(args.reflector),
                                        records=authority))
        circuits = []
        for relay in relays:
            try:
                circuits.append(await relay_client.reserve(relay))
            except MeshNatError as exc:
                log.warning("chat: no reservation on %s: %s", relay.peer_id, exc)
        authority.set_relay_addrs(circuits)
        client = await node.mount(RendezvousClient(authority))
        network = await node.mount(ChatNetwork(
            name, rendezvous=rendezvous, connector=connector, client=client,
            config=ChatNetworkConfig(lookup_interval=args.lookup_interval),
            events=lambda event: out.emit(event.to_json(), _text(event))))
        record = authority.current().record
        out.emit({"event": "joined", "network": name, "peer": str(node.peer_id),
                  "name": record.display_name(), "addrs": [str(a) for a in record.addrs]},
                 f"joined {name} as {record.display_name()} ({node.peer_id})")
        done = trio.Event()
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                await wait_for_signal()
                done.set()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(_read_lines, network, out, args.interactive, done)
            await done.wait()
            nursery.cancel_scope.cancel()
        await network.leave()
        out.emit({"event": "left", "network": name}, f"left {name}")
    return 0
