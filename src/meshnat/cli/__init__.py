"""The `meshnat` command: reflectors and relays, discovery, NAT probes, connections, tunnels.

Every subcommand takes `--json` (one JSON object per line on stdout) and exits 0 on success,
1 when the network gave no answer it could trust, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from meshnat.cli.chat import add_chat_parser
from meshnat.cli.commands import (
    DEFAULT_PORT,
    Output,
    run_command,
    run_demo,
    run_discover,
    run_probe,
    run_reflector,
)
from meshnat.cli.connect import run_connect, run_listen, run_relay
from meshnat.cli.traversal import add_traversal_commands
from meshnat.cli.tunnel import add_tunnel_commands
from meshnat.cli.up import add_up_parser
from meshnat.errors import ConfigError, MeshNatError
from meshnat.node import NodeConfig
from meshnat.portmap import MappingProtocol
from meshnat.relay import RelayServiceConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshnat", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log INFO (-v) or DEBUG (-vv) to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.add_argument("--key-file", type=Path, help="Ed25519 identity file (created if absent)")
        p.add_argument("--ipv6", action="store_true",
                       help="dual stack: listen on [::] too, on the same ports")

    p = sub.add_parser("reflector", help="run a node that reflects addresses to its peers")
    p.add_argument("--listen", action="append", default=[], metavar="MULTIADDR",
                   help=f"listen address (default TCP and QUIC on 0.0.0.0:{DEFAULT_PORT})")
    p.add_argument("--alt-port", type=int, default=DEFAULT_PORT + 1,
                   help="second UDP port for NAT classification (default %(default)s; 0: any)")
    p.add_argument("--relay", action="store_true", help="also relay circuits (circuit relay v2)")
    p.add_argument("--rendezvous", action="store_true",
                   help="also serve rendezvous by network name (for `meshnat chat`)")
    common(p)
    p.set_defaults(run=run_reflector)

    p = sub.add_parser("discover", help="learn this node's public address from reflectors")
    p.add_argument("--reflector", action="append", default=[], metavar="MULTIADDR",
                   help="a reflector's multiaddr ending in /p2p/<peer id> (repeat)")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--family", type=int, choices=(4, 6), default=4,
                   help="IP version of the mapping to learn (6: listens dual stack, asks the "
                        "reflectors' IPv6 addresses)")
    p.add_argument("--min-responses", type=int, default=3)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument("--port", type=int, default=0, help="local TCP and UDP port (default any)")
    p.add_argument("--no-group", action="store_true",
                   help="count every reflector's vote even when they share an IP (loopback)")
    common(p)
    p.set_defaults(run=run_discover)

    p = sub.add_parser("probe", help="classify this node's NAT through mesh reflectors")
    p.add_argument("--reflector", action="append", default=[], metavar="MULTIADDR",
                   help="a reflector's multiaddr ending in /p2p/<peer id> (repeat; two IPs "
                        "needed for a full report)")
    p.add_argument("--port", type=int, default=0, help="local TCP and UDP port (default any)")
    common(p)
    p.set_defaults(run=run_probe)

    p = sub.add_parser("relay", help="run a circuit relay (and reflector) for NATed peers")
    p.add_argument("--listen", action="append", default=[], metavar="MULTIADDR",
                   help=f"listen address (default TCP and QUIC on 0.0.0.0:{DEFAULT_PORT})")
    p.add_argument("--alt-port", type=int, default=DEFAULT_PORT + 1,
                   help="second UDP port for NAT classification (default %(default)s; 0: any)")
    defaults = RelayServiceConfig()
    p.add_argument("--max-reservations", type=int, default=defaults.max_reservations,
                   help="peers holding a reservation at once (default %(default)s)")
    p.add_argument("--max-reservations-per-network", type=int,
                   default=defaults.max_reservations_per_network,
                   help="of those, held by peers of one /24 or /56 (default %(default)s)")
    p.add_argument("--max-circuits", type=int, default=defaults.max_circuits,
                   help="concurrent circuits (default %(default)s)")
    p.add_argument("--max-circuits-per-network", type=int,
                   default=defaults.max_circuits_per_network,
                   help="of those, held by peers of one /24 or /56 (default %(default)s)")
    p.add_argument("--circuit-bytes", type=int, default=defaults.circuit_bytes,
                   help="bytes one circuit may carry (default %(default)s)")
    p.add_argument("--circuit-duration", type=float, default=defaults.circuit_duration,
                   help="seconds one circuit may last (default %(default)s)")
    p.add_argument("--max-connections-per-network", type=int,
                   default=NodeConfig().max_connections_per_network,
                   help="inbound connections from one /24 or /56 (default %(default)s)")
    p.add_argument("--rendezvous", action="store_true",
                   help="also serve rendezvous by network name (for `meshnat chat`)")
    common(p)
    p.set_defaults(run=run_relay)

    def mesh_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--relay", action="append", required=True, metavar="MULTIADDR",
                       help="a relay's multiaddr ending in /p2p/<peer id> (repeat: tried "
                            "in order by connect, ranked by listen)")
        p.add_argument("--reflector", action="append", default=[], metavar="MULTIADDR",
                       help="reflectors for address discovery before punching (repeat)")
        p.add_argument("--port", type=int, default=0, help="local TCP and UDP port")
        common(p)

    p = sub.add_parser("listen", help="reserve on a relay and accept connections (echo)")
    p.add_argument("--control", type=Path, default=None, metavar="PATH",
                   help="serve a control socket here (owner-only) for `meshnat traversal`")
    p.add_argument("--keep-relays", type=int, default=2, metavar="N",
                   help="hold reservations on the N best relays: reachable, public first, "
                        "lowest RTT (default %(default)s)")
    p.add_argument("--port-mapping", action="store_true",
                   help="ask the router to map the listen ports (PCP, NAT-PMP, UPnP-IGD) and "
                        "print the mappings a reflector's dial-back confirmed")
    p.add_argument("--port-mapping-protocol", action="append", default=None,
                   choices=[m.value for m in MappingProtocol], metavar="PROTOCOL",
                   help="use only this protocol (repeat; default pcp, nat-pmp, upnp)")
    p.add_argument("--port-mapping-wait", type=float, default=10.0, metavar="SECONDS",
                   help="seconds to wait for a confirmed mapping before `ready`")
    mesh_flags(p)
    p.set_defaults(run=run_listen)

    p = sub.add_parser("connect", help="reach a peer: relay first, then punch a direct path")
    p.add_argument("peer_id", help="the peer to reach (it runs `meshnat listen`)")
    p.add_argument("--wait-direct", type=float, default=5.0, metavar="SECONDS",
                   help="seconds to try for a direct path after the relay (0: stay relayed)")
    p.add_argument("--mapped", action="append", default=[], metavar="MULTIADDR",
                   help="the peer's router port mapping (its `ready` line's `mapped`): the "
                        "first rung of the ladder (repeat)")
    p.add_argument("--hold", action="store_true",
                   help="after the first echo, echo again on each line read from stdin, "
                        "until end of input (the connection stays open meanwhile)")
    mesh_flags(p)
    p.set_defaults(run=run_connect)

    add_up_parser(sub, common)
    add_tunnel_commands(sub)
    add_chat_parser(sub, common)
    add_traversal_commands(sub)

    p = sub.add_parser("demo", help="three reflectors and a client on loopback")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Output(args.json)
    try:
        code: int = trio.run(run_command, args, out)
    except ConfigError as exc:
        out.emit({"error": "bad-argument", "message": str(exc)}, f"error: {exc}")
        return 2
    except MeshNatError as exc:
        out.emit({"error": type(exc).__name__, "message": str(exc)}, f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    return code
