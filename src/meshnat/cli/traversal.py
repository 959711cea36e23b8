"""`meshnat traversal new|pairs|take|stream`: drive a running node's traversals step by step.

The node is a `meshnat listen --control PATH`; these commands send it one JSON request each
over that control socket (see cli/control.py) and print its answer.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import trio

from meshnat import _libp2p
from meshnat.cli.commands import Output, parse_peer_id
from meshnat.cli.control import (
    MAX_OP_TIME,
    Handler,
    control_request,
    default_control_path,
    number_arg,
)
from meshnat.connect import Connector
from meshnat.echo import ECHO_PROTOCOL, MAX_ECHO
from meshnat.errors import ConfigError, UnknownPair
from meshnat.traversal import PairState, TraversalService

MAX_WAIT = 60.0
MESSAGE = b"meshnat traversal echo"


def add_traversal_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `traversal new|pairs|take|stream` on the `meshnat` parser."""
    top = sub.add_parser("traversal", help="drive a running node's traversals (control socket)")
    steps = top.add_subparsers(dest="step", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--control", type=Path, default=default_control_path(),
                       help="the node's control socket (default %(default)s)")
        p.add_argument("--json", action="store_true", help="print the answer as JSON")
        p.set_defaults(run=run_traversal_step)

    p = steps.add_parser("new", help="start a traversal toward a peer; prints its id")
    p.add_argument("peer_id")
    p.add_argument("--via", action="append", default=[], metavar="MULTIADDR",
                   help="a relay to reach the peer through first (repeat; default: the "
                        "node's own relays)")
    common(p)
    p = steps.add_parser("pairs", help="list traversals and their port pairs")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help=f"first wait (at most {MAX_WAIT:.0f} s) for a pair in --state")
    p.add_argument("--state", choices=[s.value for s in PairState], default="alive")
    p.add_argument("--ref", default="", help="traversal or pair id to wait on (default: newest)")
    common(p)
    p = steps.add_parser("take", help="hand a pair to the transport")
    p.add_argument("pair_id")
    p.add_argument("--initiate", action="store_true",
                   help="this node dials on the pair; without it, this node listens and the "
                        "peer dials now")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="seconds the pair may wait for its stream before it expires")
    common(p)
    p = steps.add_parser("stream", help="open a stream over a taken pair and echo a message")
    p.add_argument("pair_id")
    common(p)


async def run_traversal_step(args: argparse.Namespace, out: Output) -> int:
    request: dict[str, object] = {"op": f"traversal.{args.step}"}
    if args.step == "new":
        request.update(peer=args.peer_id, via=args.via)
    elif args.step == "pairs":
        request.update(wait=args.wait, state=args.state, ref=args.ref)
    elif args.step == "take":
        request.update(pair=args.pair_id, initiate=args.initiate, deadline=args.deadline)
    else:
        request.update(pair=args.pair_id)
    answer = await control_request(args.control, request, timeout=MAX_OP_TIME + 10)
    out.emit(answer, _text(answer))
    return 0 if answer.get("ok") else 1


def _text(answer: dict[str, Any]) -> str:
    if not answer.get("ok"):
        return f"error: {answer.get('error')}: {answer.get('message')}"
    if "traversals" in answer:
        lines = []
        for traversal in answer["traversals"]:
            lines.append(f"traversal {traversal['traversal']} to {traversal['peer']} "
                         f"(port {traversal['local_port']})")
            lines += [f"  {p['id']} {p['state']} -> {p['remote']} rtt {p['rtt_ms']} ms"
                      for p in traversal["pairs"]]
        return "\n".join(lines) or "no traversals"
    return " ".join(f"{k}={v}" for k, v in answer.items() if k != "ok")


def traversal_handlers(traversals: TraversalService,
                       connector: Connector) -> dict[str, Handler]:
    """The control socket's `traversal.*` operations on a running node."""

    async def new(request: dict[str, Any]) -> dict[str, object]:
        peer = parse_peer_id(request.get("peer"))
        via = request.get("via") or []
        if not isinstance(via, list) or not all(isinstance(v, str) for v in via):
            raise ConfigError("via: expected a list of multiaddrs")
        if via:  # reach the peer through these relays first
            await connector.connect_via(peer, _libp2p.merge_peer_addrs(via))
        else:
            await connector.connect(_libp2p.peer_by_id(peer))
        traversal = await traversals.start(peer)
        return {"traversal": traversal.id, "local_port": traversal.table.local_port}

    async def pairs(request: dict[str, Any]) -> dict[str, object]:
        wait = _number(request.get("wait", 0.0), "wait")
        if wait > 0:
            ref = str(request.get("ref") or "") or _newest(traversals)
            await traversals.wait_for(ref, _state(request.get("state")), min(wait, MAX_WAIT))
        now = trio.current_time()
        return {"traversals": [t.to_json(now) for t in traversals.traversals()]}

    async def take(request: dict[str, Any]) -> dict[str, object]:
        deadline = request.get("deadline")
        pair = await traversals.take(
            _pair(request), initiate=bool(request.get("initiate")),
            deadline=None if deadline is None else _number(deadline, "deadline"))
        return {"pair": pair.to_json(trio.current_time())}

    async def stream(request: dict[str, Any]) -> dict[str, object]:
        started = trio.current_time()
        opened = await traversals.open_stream(_pair(request), ECHO_PROTOCOL)
        with _libp2p.map_peer_errors("echo over the pair", 10), trio.fail_after(10):
            await opened.stream.write(MESSAGE)
            answer = await opened.stream.read(MAX_ECHO)
            await opened.stream.close()
        return {"pair": opened.pair.id, "echo_ok": answer == MESSAGE,
                "local_port": opened.local_port, "remote": str(opened.remote),
                "rtt_ms": round((trio.current_time() - started) * 1e3, 3)}

    return {"traversal.new": new, "traversal.pairs": pairs, "traversal.take": take,
            "traversal.stream": stream}


def _pair(request: dict[str, Any]) -> str:
    pair = request.get("pair")
    if not isinstance(pair, str) or not pair:
        raise ConfigError("pair: expected a pair id such as 1a2b3c4d.1")
    return pair


def _number(value: object, name: str) -> float:
    return number_arg(value, name, lo=0, hi=MAX_WAIT, unit=" of seconds")


def _state(value: object) -> PairState:
    try:
        return PairState(value)
    except ValueError as exc:
        raise ConfigError(f"state: one of {[s.value for s in PairState]}") from exc


def _newest(traversals: TraversalService) -> str:
    known = traversals.traversals()
    if not known:
        raise UnknownPair("no traversal yet: start one with `meshnat traversal new`")
    return known[-1].id

