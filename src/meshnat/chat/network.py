"""`ChatNetwork`: the members of one named network, found at a rendezvous point, reached on
the best path and talked to; what happens is reported as `chat.events`.

Rules:
- A member is a peer whose verified record the rendezvous point lists under the network's
  name; only members may talk (ChatService's `accept`), and only a verified record's direct
  addresses are dialled, so the security handshake proves the far end holds that record's key.
- Of two members the one with the lower peer id dials; the other waits `dial_grace` for it
  first, so that they do not open two relayed connections (and two colliding punches).
- A member that cannot be reached is tried again `retry_interval` later, if its record is
  still listed. A member that said goodbye stays gone until it registers a newer record.
- A member's path is `direct` or `relayed` when first reached (`punched` if it was punched
  before its record was found here), and `punched` once a member first reached through a
  relay gets a direct connection. A line that fails makes the Connector check the path
  (`Connector.suspect`) and make a relay circuit beside it; the line is sent again on that
  circuit. A dead punched path is retired and the member punched again over the circuit.
- A line counts as sent to a member only once the member has read it (ChatService waits
  for the end of the stream the receiver sends after reading).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn, PeerInfo, TaskStatus
from meshnat.chat.events import (
    ChatEventSink,
    Delivery,
    LineHeard,
    LineSent,
    Member,
    MemberConnected,
    MemberLeft,
    MemberPunched,
    MemberUnreachable,
    SendFailed,
    ignore_chat_events,
)
from meshnat.chat.messages import Say
from meshnat.chat.service import ChatConfig, ChatService, Heard
from meshnat.config import require_positive
from meshnat.connect import Connector
from meshnat.errors import (
    ConfigError,
    MalformedMessage,
    MeshNatError,
    NotMounted,
    RemoteProtocolError,
    StaleRecord,
)
from meshnat.node import MeshNode
from meshnat.paths import PathKind
from meshnat.records import AddressRecord, RecordStore
from meshnat.rendezvous import RendezvousClient
from meshnat.rendezvous.messages import check_namespace

log = logging.getLogger(__name__)


def check_network_name(name: str) -> str:
    """A network name (1-64 of A-Z a-z 0-9 . _ -), else ConfigError."""
    try:
        return check_namespace(name)
    except MalformedMessage as exc:
        raise ConfigError(f"network name: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatNetworkConfig:
    """How ChatNetwork finds and reaches members."""

    lookup_interval: float = 2.0
    """Seconds between rendezvous lookups."""

    dial_grace: float = 5.0
    """Seconds the member with the higher peer id waits for the other to dial first."""

    punch_wait: float = 15.0
    """Seconds to wait for a relayed path to be punched before reporting it as it is."""

    retry_interval: float = 10.0
    """Seconds before an unreachable member is tried again."""

    leave_timeout: float = 5.0
    """Seconds `leave()` spends on goodbyes and unregistering at most."""

    chat: ChatConfig = field(default_factory=ChatConfig)
    """Limits of the lines themselves."""

    def __post_init__(self) -> None:
        require_positive(self, "lookup_interval", "dial_grace", "punch_wait",
                         "retry_interval", "leave_timeout")


@dataclass
class _Member:
    record: AddressRecord
    path: PathKind | None = None
    transport: str | None = None
    connected: trio.Event = field(default_factory=trio.Event)
    connecting: bool = False
    retry_at: float = 0.0

    def who(self) -> Member:
        return Member(str(self.record.peer_id), self.record.display_name())


class ChatNetwork:
    """Membership of the network `name` at `rendezvous`, and lines to and from its members.

    A service: `await node.mount(ChatNetwork(...))` mounts the chat protocol, registers this
    node's record (raising what `RendezvousClient.register` raises) and starts looking for
    members. `connector` reaches them; `client` must be mounted on the same node.
    """

    def __init__(self, name: str, *, rendezvous: PeerInfo, connector: Connector,
                 client: RendezvousClient, config: ChatNetworkConfig | None = None,
                 events: ChatEventSink = ignore_chat_events) -> None:
        self.name, self.rendezvous = check_network_name(name), rendezvous
        self.config = config or ChatNetworkConfig()
        self._connector, self._client, self._events = connector, client, events
        self._chat = ChatService(accept=self.is_member, on_heard=self._heard,
                                 config=self.config.chat)
        self._members: dict[str, _Member] = {}
        self._store: RecordStore[AddressRecord] = RecordStore()
        self._departed: dict[str, int] = {}
        """Peer -> seq of the record it left with: that record must not bring it back."""
        self._node: MeshNode | None = None
        self._activity: trio.CancelScope | None = None

    def is_member(self, peer: ID) -> bool:
        return str(peer) in self._members

    def members(self) -> dict[str, PathKind | None]:
        """Each member's peer id and its path (None while it is not reached yet)."""
        return {key: member.path for key, member in self._members.items()}

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        try:
            with _libp2p.single_exception():  # a failed registration is raised as it is
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._chat.serve, node)
                    await self._serve(node, task_status)
        finally:
            self._node = None

    async def _serve(self, node: MeshNode, task_status: TaskStatus[None]) -> None:
        await self._client.register(self.rendezvous, self.name)
        self._node = node
        try:
            with (_libp2p.connection_reports(node.host, 256) as added,
                  trio.CancelScope() as self._activity):
                async with trio.open_nursery() as activity:
                    activity.start_soon(self._client.keep_registered, self.rendezvous,
                                        self.name)
                    activity.start_soon(self._watch, added)
                    activity.start_soon(self._look_up, activity)
                    task_status.started()
        finally:  # after leave() the chat protocol goes on until unmounted
            self._activity = None

    def _mounted(self) -> MeshNode:
        if self._node is None:
            raise NotMounted("mount ChatNetwork on a running MeshNode first")
        return self._node

    # --- members -------------------------------------------------------------------------

    async def _look_up(self, nursery: trio.Nursery) -> None:
        """Ask the rendezvous point for the network's records, again and again; a rendezvous
        that is gone only means no new members are found."""
        while True:
            try:
                records = await self._client.discover(self.rendezvous, self.name)
            except MeshNatError as exc:
                log.info("chat: lookup failed: %s", exc)
            else:
                for record in records:
                    self._found(record, nursery)
            await trio.sleep(self.config.lookup_interval)

    def _found(self, record: AddressRecord, nursery: trio.Nursery) -> None:
        key = record.key
        if record.peer_id == self._mounted().peer_id or record.seq <= self._departed.get(key, -1):
            return
        try:
            self._store.offer(record, time.time())
        except StaleRecord as exc:
            log.debug("chat: %s", exc)
            return
        member = self._members.setdefault(key, _Member(record))
        member.record = self._store.get(key, time.time()) or record
        self._report(key)
        if member.path is None and not member.connecting and \
                trio.current_time() >= member.retry_at:
            member.connecting = True
            nursery.start_soon(self._reach, member)

    async def _reach(self, member: _Member) -> None:
        record = member.record
        try:
            if str(self._mounted().peer_id) > record.key:  # the lower id dials: wait for it
                with trio.move_on_after(self.config.dial_grace):
                    await member.connected.wait()
            if member.path is None:
                path = await self._connector.connect(
                    PeerInfo(record.peer_id, record.direct_addrs()),
                    mapped=record.mapped_addrs())
                self._report(record.key, kind=path.kind)
                if path.kind is PathKind.RELAYED and await self._connector.wait_direct(
                        record.peer_id, self.config.punch_wait):
                    self._report(record.key)
        except MeshNatError as exc:
            member.retry_at = trio.current_time() + self.config.retry_interval
            self._events(MemberUnreachable(member.who(), str(exc)))
        finally:
            member.connecting = False

    async def _watch(self, added: trio.MemoryReceiveChannel[INetConn]) -> None:
        async for conn in added:  # a new connection: look at that member's path again
            self._report(str(conn.muxed_conn.peer_id))

    def _report(self, key: str, *, kind: PathKind | None = None) -> None:
        """Report a member reachable the first time, and punched when a member first reached
        through a relay gets a direct connection."""
        member = self._members.get(key)
        conns = self._mounted().connections(member.record.peer_id) if member else []
        if member is None or not conns:
            return
        best = conns[0]
        member.transport = best.transport
        if member.path is None:
            # a member first seen over a punched connection (punched before its record was
            # found here) is reported as punched: its lines take that path
            member.path = kind if kind in (PathKind.DIRECT, PathKind.RELAYED) else (
                PathKind.PUNCHED if best.kind is PathKind.PUNCHED else
                PathKind.DIRECT if best.kind.is_direct else PathKind.RELAYED)
            member.connected.set()
            self._events(MemberConnected(member.who(), member.path, best.transport))
        elif member.path is PathKind.RELAYED and best.kind.is_direct:
            member.path = PathKind.PUNCHED
            self._events(MemberPunched(member.who(), best.transport))

    def _label(self, member: _Member, path: PathKind) -> PathKind:
        """How a line's path is reported: punched over the direct path of a punched member."""
        if not path.is_direct:
            return PathKind.RELAYED
        return PathKind.PUNCHED if member.path is PathKind.PUNCHED else PathKind.DIRECT

    # --- lines ---------------------------------------------------------------------------

    def _heard(self, heard: Heard) -> None:
        member = self._members.get(str(heard.peer))
        if member is None:
            return
        if heard.text is None:
            key = member.record.key
            self._members.pop(key, None)
            self._store.forget(key)
            self._departed[key] = member.record.seq
            self._events(MemberLeft(member.who(), "bye"))
            return
        self._events(LineHeard(member.who(), heard.text, self._label(member, heard.path),
                               heard.transport))

    def _connected(self) -> list[_Member]:
        return [m for m in self._members.values() if m.path is not None]

    async def say(self, text: str) -> LineSent:
        """Send one line to every connected member; a member is in `to` only once it has
        read the line. A member with no connection left (its punched path died) is reached
        through a relay again first, waited for up to the chat's `stream_timeout`. A line
        that fails on one connection is sent again (the same line: heard once) on another
        one, a relay circuit the Connector makes beside a suspect punched path, say.

        Raises ConfigError (not a valid line; nothing was sent) or NotMounted.
        """
        message = self._chat.line(text)
        self._mounted()
        to: list[Delivery] = []
        failed: list[SendFailed] = []
        for member in self._connected():
            try:
                path = await self._deliver(member.record.peer_id, message)
            except MeshNatError as exc:
                failed.append(SendFailed(member.who(), str(exc)))
                continue
            to.append(Delivery(member.who(), self._label(member, path)))
        return LineSent(text, tuple(to), tuple(failed))

    async def _deliver(self, peer: ID, message: Say) -> PathKind:
        """`message` to `peer`: over its best connection, else (that failed) over the next
        one the Connector has or makes within the chat's `stream_timeout`."""
        node, wait = self._mounted(), self.config.chat.stream_timeout
        # e.g. its dead punched path was just retired: a relay circuit is on its way
        if not node.connections(peer) and self._connector.suspect(peer):
            await self._connector.wait_connected(peer, wait)
        first = node.best_connection(peer)  # PeerUnavailable when there is none
        try:
            return await self._chat.send_on(first, message)
        except RemoteProtocolError:
            raise  # the peer answered (a refusal, say): the path works, another would not help
        except MeshNatError as exc:
            # a dead punched path? it is checked, and a relay circuit made beside it
            if not self._connector.suspect(peer) and len(node.connections(peer)) < 2:
                raise
            other = await self._connector.wait_connected(peer, wait, other_than=first.conn)
            if other is None:
                raise
            log.info("chat: a line to %s failed on its %s path (%s); sending it again on "
                     "the %s one", peer, first.kind, exc, other.kind)
        return await self._chat.send_on(other, message)

    async def leave(self) -> None:
        """Stop looking for members, say goodbye to every connected one and unregister (best
        effort, within `leave_timeout`). Lines from members are still heard until unmounted."""
        if self._activity is not None:
            self._activity.cancel()
        with trio.move_on_after(self.config.leave_timeout):
            for member in self._connected():
                try:
                    await self._chat.bye(member.record.peer_id)
                except MeshNatError as exc:
                    log.debug("chat: no goodbye to %s: %s", member.record.key, exc)
            try:
                await self._client.unregister(self.rendezvous, self.name)
            except MeshNatError as exc:
                log.debug("chat: unregister failed: %s", exc)
