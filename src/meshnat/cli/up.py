"""`meshnat up`: join the mesh from bootstrap addresses and stay up, printing what it decides.

Lines on stdin are commands, so the node can be scripted: `connect <peer id>` reaches that
peer by its id alone (record lookup, then the ladder) and echoes over the path; `status`
prints reachability, addresses, reflectors, relays and DHT peers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace

import trio

from meshnat._libp2p import ID, peer_by_id
from meshnat.cli.commands import DEFAULT_PORT, Output, node_config_from_listen, wait_for_signal
from meshnat.echo import EchoService, echo
from meshnat.errors import MeshNatError
from meshnat.mesh import MeshChanged, MeshConfig, Reachability
from meshnat.node import MeshNode

CONNECT_TIMEOUT = 60.0
"""Seconds a `connect` command may take (lookup, ladder and echo)."""


def add_up_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                  common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("up", help="join the mesh and organize: reflectors, relays, DHT record")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                   help="a mesh node's multiaddr ending in /p2p/<peer id> (repeat; none: "
                        "this is the mesh's first node)")
    p.add_argument("--listen", action="append", default=[], metavar="MULTIADDR",
                   help=f"listen address (default TCP and QUIC on 0.0.0.0:{DEFAULT_PORT})")
    p.add_argument("--reachability", choices=[str(r) for r in Reachability
                                              if r is not Reachability.UNKNOWN],
                   help="assume it instead of measuring it by dial-backs")
    p.add_argument("--no-relay", action="store_true", help="never relay for others")
    common(p)
    p.set_defaults(run=run_up)


async def run_up(args: argparse.Namespace, out: Output) -> int:
    forced = Reachability(args.reachability) if args.reachability else None
    mesh = MeshConfig(reachability=forced, offer_relay=not args.no_relay)
    config = replace(node_config_from_listen(args.listen, args.key_file, DEFAULT_PORT),
                     bootstrap=tuple(args.bootstrap), mesh=mesh)
    async with MeshNode(config) as node:
        await node.mount(EchoService())

        def report(event: MeshChanged) -> None:
            out.emit(event.to_json(), f"{event.what}: {event.detail}")

        node.mesh.events = report
        addrs = [str(a) for a in node.addrs]
        out.emit({"event": "ready", "peer_id": str(node.peer_id), "addrs": addrs},
                 f"up as {node.peer_id} on:\n  " + "\n  ".join(addrs))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_commands, node, out, nursery)
            await wait_for_signal()
            nursery.cancel_scope.cancel()
        out.emit({"event": "stopped", **node.mesh.to_json()}, "stopped")
    return 0


async def _commands(node: MeshNode, out: Output, nursery: trio.Nursery) -> None:
    """Run each stdin command in its own task; at end of input, stay up."""
    while True:
        # abandoned on cancel: a thread blocked in readline must not hold up leaving
        line: str = await trio.to_thread.run_sync(  # type: ignore[call-arg]
            sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        match line.split():
            case ["connect", peer]:
                nursery.start_soon(_connect, node, out, peer)
            case ["status"]:
                out.emit({"event": "status", **node.mesh.to_json()}, str(node.mesh.to_json()))
            case []:
                pass
            case _:
                out.emit({"event": "error", "error": "commands: connect <peer id> | status"},
                         "commands: connect <peer id> | status")


async def _connect(node: MeshNode, out: Output, name: str) -> None:
    started = trio.current_time()
    try:
        peer = ID.from_base58(name)
    except ValueError:
        out.emit({"event": "connect-failed", "peer": name, "error": "not a peer id"},
                 f"{name}: not a peer id")
        return
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            path = await node.connect(peer)
            answer = await echo(node, peer_by_id(peer), b"meshnat up", connection=path.connection)
    except (MeshNatError, trio.TooSlowError) as exc:
        out.emit({"event": "connect-failed", "peer": name, "error": str(exc) or "timeout"},
                 f"{name}: {exc}")
        return
    out.emit({"event": "connected", **path.to_json(), "echo_ok": answer == b"meshnat up",
              "elapsed_ms": round((trio.current_time() - started) * 1e3, 1)},
             f"{name}: {path.kind} ({path.transport})")
