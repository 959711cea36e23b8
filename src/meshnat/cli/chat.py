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
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn, PeerInfo
from meshnat.chat import ChatService, Heard
from meshnat.cli.commands import Output, wait_for_signal
from meshnat.cli.connect import mount_discovery, mount_relay_and_puncher
from meshnat.connect import Connector
from meshnat.errors import ConfigError, MalformedMessage, MeshNatError, StaleRecord
from meshnat.node import MeshNode, NodeConfig
from meshnat.records import (
    AddressRecord,
    NatSummary,
    RecordAuthority,
    RecordConfig,
    RecordStore,
)
from meshnat.rendezvous import RendezvousClient
from meshnat.rendezvous.messages import check_namespace

log = logging.getLogger(__name__)

DIAL_GRACE = 5.0
"""Seconds the member with the higher peer id waits for the other to dial first, so that two
members do not open two relayed connections (and two colliding punches) to each other."""
PUNCH_WAIT = 15.0
"""Seconds to wait for a relayed path to be punched to direct before saying it stays relayed."""
RETRY_INTERVAL = 10.0
"""Seconds before an unreachable member is tried again (if its record is still registered)."""


@dataclass
class _Member:
    record: AddressRecord
    path: str | None = None
    """What `peer-connected` said: `direct`, `relayed`, then `punched` after an upgrade."""
    transport: str | None = None
    connected: trio.Event = field(default_factory=trio.Event)
    connecting: bool = False
    retry_at: float = 0.0

    def facts(self) -> dict[str, object]:
        return {"peer": str(self.record.peer_id), "name": self.record.display_name()}


class ChatSession:
    """The members of one network as this node sees them, and what it prints about them."""

    def __init__(self, node: MeshNode, out: Output, *, network: str, rendezvous: PeerInfo,
                 connector: Connector, client: RendezvousClient, lookup_interval: float) -> None:
        self.node, self.out, self.network, self.rendezvous = node, out, network, rendezvous
        self.connector, self.client, self.lookup_interval = connector, client, lookup_interval
        self.chat: ChatService | None = None
        self.members: dict[str, _Member] = {}
        self.store: RecordStore[AddressRecord] = RecordStore()
        self.departed: dict[str, int] = {}
        """Peer -> seq of the record it left with: that record must not bring it back."""
        self._send_conn, self._recv_conn = trio.open_memory_channel[ID](256)

    # --- members ---------------------------------------------------------------------------

    def is_member(self, peer: ID) -> bool:
        return str(peer) in self.members

    async def look_up_members(self, nursery: trio.Nursery) -> None:
        """Ask the rendezvous point for the network's records, again and again; a rendezvous
        that is gone only means no new members are found."""
        while True:
            try:
                records = await self.client.discover(self.rendezvous, self.network)
            except MeshNatError as exc:
                log.info("chat: lookup failed: %s", exc)
            else:
                for record in records:
                    self._found(record, nursery)
            await trio.sleep(self.lookup_interval)

    def _found(self, record: AddressRecord, nursery: trio.Nursery) -> None:
        key = record.key
        if record.peer_id == self.node.peer_id or record.seq <= self.departed.get(key, -1):
            return
        try:
            self.store.offer(record, time.time())
        except StaleRecord as exc:
            log.debug("chat: %s", exc)
            return
        member = self.members.setdefault(key, _Member(record))
        member.record = self.store.get(key, time.time()) or record
        self._report(key)
        if member.path is None and not member.connecting and trio.current_time() >= \
                member.retry_at:
            member.connecting = True
            nursery.start_soon(self._reach, member)

    async def _reach(self, member: _Member) -> None:
        record = member.record
        try:
            if str(self.node.peer_id) > record.key:  # the lower id dials; wait for it first
                with trio.move_on_after(DIAL_GRACE):
                    await member.connected.wait()
            if member.path is None:
                # only addresses of a verified record are dialled; the security handshake
                # then proves the far end holds that record's key
                path = await self.connector.connect(PeerInfo(record.peer_id,
                                                             record.direct_addrs()))
                self._report(record.key, kind=path.kind)
                if path.kind == "relayed" and await self.connector.wait_direct(record.peer_id,
                                                                               PUNCH_WAIT):
                    self._report(record.key)
        except MeshNatError as exc:
            member.retry_at = trio.current_time() + RETRY_INTERVAL
            self.out.emit({"event": "peer-unreachable", **member.facts(), "error": str(exc)},
                          f"cannot reach {record.display_name()}: {exc}")
        finally:
            member.connecting = False

    def connection_added(self, conn: INetConn) -> None:
        """Swarm callback (must not block): look at that peer's path again."""
        try:
            self._send_conn.send_nowait(conn.muxed_conn.peer_id)
        except trio.WouldBlock:
            log.debug("chat: connection report dropped")

    async def watch_connections(self) -> None:
        async for peer in self._recv_conn:
            self._report(str(peer))

    def _report(self, key: str, *, kind: str | None = None) -> None:
        """Print `peer-connected` the first time a member is reachable, `path-upgraded` when
        a relayed member gets a direct connection."""
        member = self.members.get(key)
        conns = self.node.host.get_network().get_connections(ID.from_base58(key))
        if member is None or not conns:
            return
        direct = [c for c in conns if not _libp2p.is_relayed(c)]
        best = direct[0] if direct else conns[0]
        member.transport = _libp2p.transport_of(best)
        if member.path is None:
            member.path = kind if kind in ("direct", "relayed") else (
                "direct" if direct else "relayed")
            member.connected.set()
            self.out.emit({"event": "peer-connected", **member.facts(), "path": member.path,
                           "transport": member.transport},
                          f"{member.record.display_name()} connected ({member.path})")
        elif member.path == "relayed" and direct:
            member.path = "punched"
            self.out.emit({"event": "path-upgraded", **member.facts(), "path": "punched",
                           "transport": member.transport},
                          f"{member.record.display_name()} now punched through")

    def _left(self, member: _Member, reason: str) -> None:
        key = member.record.key
        self.members.pop(key, None)
        self.store.forget(key)
        self.departed[key] = member.record.seq
        self.out.emit({"event": "peer-left", **member.facts(), "reason": reason},
                      f"{member.record.display_name()} left ({reason})")

    # --- lines -----------------------------------------------------------------------------

    def heard(self, heard: Heard) -> None:
        member = self.members.get(str(heard.peer))
        if member is None:
            return
        if heard.text is None:
            self._left(member, "bye")
            return
        path = "relayed" if heard.path == "relayed" else (
            "punched" if member.path == "punched" else "direct")
        self.out.emit({"event": "message", **member.facts(), "text": heard.text, "path": path,
                       "transport": heard.transport},
                      f"[{member.record.display_name()} via {path}] {heard.text}")

    async def say(self, text: str) -> None:
        """Send one line to every connected member; prints one `sent` event."""
        assert self.chat is not None
        sent: list[dict[str, object]] = []
        for member in [m for m in self.members.values() if m.path is not None]:
            try:
                path = await self.chat.say(member.record.peer_id, text)
            except ConfigError as exc:
                self.out.emit({"event": "error", "error": str(exc)}, f"not sent: {exc}")
                return
            except MeshNatError as exc:
                self.out.emit({"event": "send-failed", **member.facts(), "error": str(exc)},
                              f"could not send to {member.record.display_name()}: {exc}")
                continue
            label = "punched" if path == "direct" and member.path == "punched" else path
            sent.append({**member.facts(), "path": label})
        names = ", ".join(str(t["name"]) for t in sent) or "nobody yet"
        self.out.emit({"event": "sent", "text": text, "to": sent}, f"(sent to {names})")

    async def read_lines(self, interactive: bool, done: trio.Event) -> None:
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
                await self.say(text)

    async def leave(self) -> None:
        """Say goodbye to every member and unregister (best effort, bounded)."""
        assert self.chat is not None
        with trio.move_on_after(5):
            for member in [m for m in self.members.values() if m.path is not None]:
                try:
                    await self.chat.bye(member.record.peer_id)
                except MeshNatError as exc:
                    log.debug("chat: no goodbye to %s: %s", member.record.key, exc)
            try:
                await self.client.unregister(self.rendezvous, self.network)
            except MeshNatError as exc:
                log.debug("chat: unregister failed: %s", exc)


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
    common(p)
    p.set_defaults(run=run_chat)


def _network(name: str) -> str:
    try:
        return check_namespace(name)
    except MalformedMessage as exc:
        raise ConfigError(f"network name: {exc}") from None


async def run_chat(args: argparse.Namespace, out: Output) -> int:
    network = _network(args.network)
    (rendezvous,) = _libp2p.merge_peer_addrs([args.rendezvous])
    relays = _libp2p.merge_peer_addrs(args.relay)
    config = NodeConfig(tcp_port=args.port, udp_port=args.port, key_file=args.key_file)
    async with MeshNode(config) as node:
        discovery, mapping = await mount_discovery(node, args)
        relay_client, puncher = await mount_relay_and_puncher(node, discovery, mapping)
        connector = await node.mount(Connector(relays=relays, relay_client=relay_client,
                                               puncher=puncher))
        authority = await node.mount(RecordAuthority(
            RecordConfig(name=args.name, publish_local=args.publish_local), discovery=discovery))
        authority.set_nat(NatSummary(mapping=mapping))
        circuits = []
        for relay in relays:
            try:
                circuits.append(await relay_client.reserve(relay))
            except MeshNatError as exc:
                log.warning("chat: no reservation on %s: %s", relay.peer_id, exc)
        authority.set_relay_addrs(circuits)
        client = await node.mount(RendezvousClient(authority))
        session = ChatSession(node, out, network=network, rendezvous=rendezvous,
                              connector=connector, client=client,
                              lookup_interval=args.lookup_interval)
        session.chat = await node.mount(ChatService(accept=session.is_member,
                                                    on_heard=session.heard))
        await client.register(rendezvous, network)
        record = authority.current().record
        out.emit({"event": "joined", "network": network, "peer": str(node.peer_id),
                  "name": record.display_name(), "addrs": [str(a) for a in record.addrs]},
                 f"joined {network} as {record.display_name()} ({node.peer_id})")
        done = trio.Event()
        with _libp2p.watch_connections(node.host, session.connection_added):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.keep_registered, rendezvous, network)
                nursery.start_soon(session.watch_connections)
                nursery.start_soon(session.look_up_members, nursery)
                nursery.start_soon(session.read_lines, args.interactive, done)
                async with trio.open_nursery() as waiting:

                    async def stop_on_signal() -> None:
                        await wait_for_signal()
                        done.set()

                    waiting.start_soon(stop_on_signal)
                    await done.wait()
                    waiting.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        await session.leave()
        out.emit({"event": "left", "network": network}, f"left {network}")
    return 0
