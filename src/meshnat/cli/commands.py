"""`meshnat reflector`, `discover`, `probe` and `demo`, and what every subcommand shares."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from contextvars import ContextVar
from pathlib import Path

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID
from meshnat.classify import (
    NatClassifier,
    NatReport,
    ProbeHelperConfig,
    ProbeHelperService,
)
from meshnat.discovery import DiscoveryConfig, PeerAddressDiscovery
from meshnat.errors import ConfigError, InsufficientResponses, NoConsensus
from meshnat.mesh.dialback import DialBackService
from meshnat.node import MeshNode, NodeConfig
from meshnat.paths import PathKind
from meshnat.reflection import ReflectionService
from meshnat.relay import RelayService
from meshnat.rendezvous import RendezvousService
from meshnat.wire.codec import describe

log = logging.getLogger(__name__)

DEFAULT_PORT = 4001

Command = Callable[[argparse.Namespace, "Output"], Awaitable[int]]


class Output:
    """Writes results as JSON lines (`--json`) or as readable text."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, obj: dict[str, object], text: str) -> None:
        print(json.dumps(obj) if self.as_json else text, flush=True)


def parse_peer_id(value: object) -> ID:
    """A peer id given on the command line or in a control request; ConfigError if it is not
    one (the message shows only the start of the value)."""
    peer = _libp2p.peer_id_of(value) if isinstance(value, str) else None
    if peer is None:
        raise ConfigError(f"not a peer id: {describe(value)}")
    return peer


def node_config_from_listen(listen: Sequence[str], key_file: Path | None,
                            default_port: int, ipv6: bool = False) -> NodeConfig:
    """Map `--listen` multiaddrs (one TCP, one QUIC, same IP) onto a NodeConfig; `ipv6`
    (`--ipv6`) listens on `[::]` too, on the same ports."""
    listen_ip6 = "::" if ipv6 else None
    if not listen:
        return NodeConfig(tcp_port=default_port, udp_port=default_port, key_file=key_file,
                          listen_ip6=listen_ip6)
    ips, tcp, udp = set(), None, None
    for text in listen:
        parsed = _libp2p.listen_parts(_libp2p.parse_multiaddr(text))
        if parsed is None:
            raise ConfigError(f"--listen needs /ip4/…/tcp/… or /ip4/…/udp/…/quic-v1, got {text!r}")
        kind, ip, port = parsed
        ips.add(ip)
        if kind == "tcp":
            tcp = port
        else:
            udp = port
    if len(ips) != 1:
        raise ConfigError(f"--listen addresses must share one IP, got {sorted(ips)}")
    return NodeConfig(listen_ip=ips.pop(), tcp_port=tcp or 0, udp_port=udp or 0,
                      key_file=key_file, listen_ip6=listen_ip6)


_STOP: ContextVar[trio.Event] = ContextVar("meshnat_stop")
_SERVERS: set[Command] = set()


def serves_until_signal(command: Command) -> Command:
    """Mark a command that runs until SIGINT or SIGTERM (`wait_for_signal`) and then stops
    cleanly; any other command is cancelled by the first signal."""
    _SERVERS.add(command)
    return command


async def wait_for_signal() -> None:
    """Return once SIGINT or SIGTERM came, at any time since the command started."""
    await _STOP.get().wait()


async def run_command(args: argparse.Namespace, out: Output) -> int:
    """Run `args.run` with SIGINT and SIGTERM caught from its first step, so that a signal sent
    right after a `ready` line stops a server as cleanly as a later one. A command not marked
    `serves_until_signal`, or a server still running at a second signal, is cancelled and
    exits 128 + the signal's number."""
    command: Command = args.run
    stop = trio.Event()
    _STOP.set(stop)  # the command's tasks inherit the context
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                nonlocal code
                code = await command(args, out)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            async for signum in signals:
                if stop.is_set() or command not in _SERVERS:
                    log.info("stopping on signal %d", signum)
                    code = 128 + signum
                    nursery.cancel_scope.cancel()
                    break
                stop.set()
    return code


@serves_until_signal
async def run_reflector(args: argparse.Namespace, out: Output) -> int:
    config = node_config_from_listen(args.listen, args.key_file, DEFAULT_PORT, args.ipv6)
    async with MeshNode(config) as node:
        reflection = await node.mount(ReflectionService())
        await node.mount(ProbeHelperService(ProbeHelperConfig(alt_port=args.alt_port)))
        await node.mount(DialBackService())  # a port mapping's TCP confirmation
        if args.relay:
            await node.mount(RelayService())
        if args.rendezvous:
            await node.mount(RendezvousService())
        addrs = [str(a) for a in node.addrs]
        out.emit({"event": "ready", "peer_id": str(node.peer_id), "addrs": addrs},
                 f"reflector {node.peer_id} listening on:\n  " + "\n  ".join(addrs))
        await wait_for_signal()
        stats = reflection.statistics()
        out.emit({"event": "stopped", "served": stats.served, "rate_limited": stats.rate_limited,
                  "malformed": stats.malformed},
                 f"stopped after serving {stats.served} reflections")
    return 0


async def run_discover(args: argparse.Namespace, out: Output) -> int:
    reflectors = _libp2p.merge_peer_addrs(args.reflector)
    config = DiscoveryConfig(min_responses=args.min_responses, timeout=args.timeout,
                             group_by_network=not args.no_group,
                             max_reflectors=max(16, args.min_responses))
    node_config = NodeConfig(tcp_port=args.port, udp_port=args.port, key_file=args.key_file,
                             listen_ip6="::" if args.ipv6 or args.family == 6 else None)
    async with MeshNode(node_config) as node:
        discovery = await node.mount(PeerAddressDiscovery(reflectors, config))
        local = [str(e) for e in node.local_endpoints(args.transport)]
        try:
            consensus = await discovery.discover(args.transport, version=args.family)
        except NoConsensus as exc:
            body = exc.consensus.to_json()
            out.emit({"error": "no-consensus", "message": str(exc), "local": local,
                      "mapping": "endpoint-dependent" if exc.consensus.endpoint_dependent
                      else None, **body}, f"error: {exc}")
            return 1
        except InsufficientResponses as exc:
            out.emit({"error": "insufficient-responses", "message": str(exc), "got": exc.got,
                      "needed": exc.needed, "asked": exc.asked}, f"error: {exc}")
            return 1
        behind_nat = str(consensus.address) not in local
        out.emit({**consensus.to_json(), "local": local, "behind_nat": behind_nat},
                 f"{args.transport} address {consensus.address} "
                 f"({consensus.votes}/{consensus.voters} observer groups agree; "
                 f"{'behind NAT' if behind_nat else 'no NAT'}, local {', '.join(local)})")
    return 0


async def run_probe(args: argparse.Namespace, out: Output) -> int:
    reflectors = _libp2p.merge_peer_addrs(args.reflector)
    node_config = NodeConfig(tcp_port=args.port, udp_port=args.port, key_file=args.key_file,
                             listen_ip6="::" if args.ipv6 else None)
    async with MeshNode(node_config) as node:
        classifier = await node.mount(NatClassifier(reflectors))
        reports = await classifier.classify_families()
    # the first family's report at the top (IPv4 on a dual-stack node), IPv6's under "ipv6"
    first = next(iter(reports.values()))
    facts = first.to_json()
    text = [format_report(first)]
    if args.ipv6 and first.version == 4:
        six = reports.get(6)
        facts["ipv6"] = six.to_json() if six is not None else None
        text.append("IPv6:\n" + (format_report(six) if six is not None
                                  else "no reflector answered over IPv6"))
    out.emit(facts, "\n".join(text))
    return 0


def format_report(report: NatReport) -> str:
    """A readable table of a NatReport."""
    facts = report.to_json()
    lines = [f"{key:<16}{'?' if facts[key] is None else facts[key]}" for key in (
        "nat_type", "mapping", "filtering", "port_allocation", "hairpin", "udp_blocked",
        "behind_nat", "local")]
    lines.append(f"{'public_addrs':<16}{', '.join(map(str, report.public_addrs)) or '?'}")
    lines += [f"  {e.test:<10}{e.target:<26}{e.result} ({e.elapsed_ms:.1f} ms)"
              for e in report.evidence]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


async def run_demo(args: argparse.Namespace, out: Output) -> int:
    """Three reflectors on 127.0.0.2-4 and a client on 127.0.0.1: discover, classify, connect."""
    from meshnat.echo import EchoService, echo

    async with AsyncExitStack() as stack:
        reflectors = []
        for i in range(3):
            config = NodeConfig(listen_ip=f"127.0.0.{i + 2}")
            node = await stack.enter_async_context(MeshNode(config))
            for service in (ReflectionService(), ProbeHelperService(), EchoService()):
                await node.mount(service)
            reflectors.append(node.peer_info())
        out.emit({"event": "reflectors", "count": 3}, "started 3 reflectors on 127.0.0.2-4")
        client = await stack.enter_async_context(MeshNode(NodeConfig(listen_ip="127.0.0.1")))
        discovery = await client.mount(PeerAddressDiscovery(reflectors))
        for transport in ("udp", "tcp"):
            consensus = await discovery.discover(transport)
            out.emit({"event": "address", **consensus.to_json()},
                     f"{transport} address: {consensus.address} "
                     f"({consensus.votes}/{consensus.voters} observer groups agree)")
        report = await (await client.mount(NatClassifier(reflectors))).classify()
        out.emit({"event": "nat-report", **report.to_json()}, format_report(report))
        started = trio.current_time()
        answer = await echo(client, reflectors[0], b"hello mesh")
        elapsed = (trio.current_time() - started) * 1e3
        out.emit({"event": "path", "peer": str(reflectors[0].peer_id), "path": PathKind.DIRECT,
                  "echo_ok": answer == b"hello mesh", "time_ms": round(elapsed, 2)},
                 f"path to {reflectors[0].peer_id}: direct, echo in {elapsed:.1f} ms")
    return 0
