"""py-libp2p connections: their paths (`Connection`), watching them come and go, waiting for
a direct one, pinging; circuit addresses and peers known by id only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import multiaddr
import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost, INetConn, INetStream, INotifee
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.exceptions import BaseLibp2pError
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.rcmgr import Direction

from meshnat._libp2p.streams import (
    carried_by,
    connection_remote,
    is_relayed,
    map_peer_errors,
    open_stream_on,
    reset_quietly,
    stream_peer,
    transport_of,
)
from meshnat.endpoint import Endpoint
from meshnat.errors import MalformedMessage
from meshnat.paths import PathKind, best_first_key

log = logging.getLogger(__name__)


def is_circuit_addr(addr: multiaddr.Multiaddr) -> bool:
    """True for a relay circuit address (`/…/p2p/<relay>/p2p-circuit/…`)."""
    return any(p.name == "p2p-circuit" for p in addr.protocols())


class _Carried(Protocol):
    @property
    def connection(self) -> INetConn: ...


class PunchedConnections(Protocol):
    """Knows the connections it opened through the NATs (a HolePuncher)."""

    def punched(self, peer: ID) -> _Carried | None: ...

    def doubtful(self, conn: INetConn) -> bool:
        """True while the health check probes `conn` after a suspected failure."""
        ...


@dataclass(frozen=True, slots=True)
class Connection:
    """One open connection to a peer and the path it takes (`MeshNode.connections`)."""

    peer: ID
    kind: PathKind
    transport: str
    """`tcp`, or `udp` for QUIC."""
    conn: INetConn
    doubtful: bool = False
    """A punched connection that its health check has not confirmed since a suspected
    failure: it may be dead, so it ranks after a relayed one (`paths.best_first_key`)."""

    @property
    def remote(self) -> Endpoint | None:
        """The peer's transport address on a direct path; None through a relay."""
        return None if self.kind is PathKind.RELAYED else connection_remote(self.conn)


def _punched(peer: ID, sources: Sequence[PunchedConnections]) -> list[INetConn]:
    return [kept.connection for source in sources if (kept := source.punched(peer)) is not None]


def _kind(relayed: bool, punched: bool) -> PathKind:
    return PathKind.RELAYED if relayed else PathKind.PUNCHED if punched else PathKind.DIRECT


def describe_connection(conn: INetConn, sources: Sequence[PunchedConnections]) -> Connection:
    """`conn` with its path: relayed (a circuit), punched (held by one of `sources`), direct."""
    peer = conn.muxed_conn.peer_id
    punched = any(p is conn for p in _punched(peer, sources))
    doubtful = punched and any(source.doubtful(conn) for source in sources)
    return Connection(peer, _kind(is_relayed(conn), punched), transport_of(conn), conn,
                      doubtful)


def accepts_streams(conn: INetConn) -> bool:
    """Whether a new stream may open on `conn`: neither it nor its muxer is closed or
    closing, and the peer has not said it goes away (Yamux GO_AWAY). The swarm keeps a
    connection listed until its own close has run, which comes a task switch or more after
    the muxer stopped taking streams ("yamux: connection closed")."""
    muxed = conn.muxed_conn
    return not (conn.is_closed or muxed.is_closed
                or not getattr(muxed, "is_established", True))


def connections_to(host: IHost, peer: ID,
                   sources: Sequence[PunchedConnections]) -> list[Connection]:
    """The open connections to `peer`, described, best first (`paths.best_first_key`); one
    that takes no new stream (closed or closing, though the swarm still lists it, or told
    GO_AWAY by the peer) is left out (`accepts_streams`)."""
    found = [describe_connection(c, sources) for c in host.get_network().get_connections(peer)
             if accepts_streams(c)]
    return sorted(found, key=lambda c: best_first_key(c.kind, doubtful=c.doubtful))


def path_of_stream(stream: INetStream, sources: Sequence[PunchedConnections]) -> PathKind:
    """The path of the connection under `stream`, as `describe_connection` labels it."""
    punched = _punched(stream_peer(stream), sources)
    return _kind(is_relayed(stream), any(carried_by(stream, p) for p in punched))


MAX_PEER_ID_TEXT = 64
"""Characters of a base58 peer id at most (an Ed25519 one has 52, an RSA one 46)."""
MAX_INLINE_KEY = 42
"""Bytes of a public key a peer id may carry inline (the libp2p peer-id spec's limit)."""


def peer_id_of(text: str) -> ID | None:
    """The peer id `text` spells, or None. py-libp2p's `ID.from_base58` takes any base58
    string (`None`, 30,000 `x`s); a peer id is an identity multihash of a public key of at
    most 42 bytes, or a SHA-256 multihash (libp2p peer-id spec)."""
    if len(text) > MAX_PEER_ID_TEXT:
        return None
    try:
        peer = ID.from_base58(text)
    except ValueError:
        return None
    raw = peer.to_bytes()
    if len(raw) == 34 and raw[:2] == b"\x12\x20":
        return peer  # the SHA-256 of a key too large to inline
    if len(raw) < 2 or raw[0] != 0x00 or not raw[1] == len(raw) - 2 <= MAX_INLINE_KEY:
        return None
    try:  # an inline key must be a key, encoded as libp2p encodes it
        key = deserialize_public_key(raw[2:])
    except (DecodeError, ValueError, BaseLibp2pError):
        return None
    return peer if ID.from_pubkey(key) == peer else None


def peer_by_id(peer: ID) -> PeerInfo:
    """`peer` with no address: reached over a connection that exists already (or, for the
    Connector, through a relay); nothing is dialled at an address."""
    return PeerInfo(peer, [])


class _ConnectionWatcher(INotifee):
    """Calls `on_connected(conn)` for every connection the swarm adds, `on_disconnected(conn)`
    for every one it drops, and `on_change()` for every stream closed and connection dropped."""

    def __init__(self, on_connected: Callable[[INetConn], None],
                 on_change: Callable[[], None] = lambda: None,
                 on_disconnected: Callable[[INetConn], None] = lambda _: None) -> None:
        self._on_connected, self._on_change = on_connected, on_change
        self._on_disconnected = on_disconnected

    async def connected(self, network: Any, conn: INetConn) -> None:
        self._on_connected(conn)

    async def disconnected(self, network: Any, conn: INetConn) -> None:
        self._on_disconnected(conn)
        self._on_change()

    async def opened_stream(self, network: Any, stream: INetStream) -> None: ...

    async def closed_stream(self, network: Any, stream: INetStream) -> None:
        self._on_change()

    async def listen(self, network: Any, multiaddr: multiaddr.Multiaddr) -> None: ...
    async def listen_close(self, network: Any, multiaddr: multiaddr.Multiaddr) -> None: ...


@contextmanager
def watch_connections(host: IHost, on_connected: Callable[[INetConn], None]) -> Iterator[None]:
    """Call `on_connected` (which must not block) for each new connection while inside."""
    network = cast(Any, host.get_network())
    watcher = _ConnectionWatcher(on_connected)
    network.register_notifee(watcher)
    try:
        yield
    finally:
        network.remove_notifee(watcher)


@contextmanager
def watch_disconnections(host: IHost, on_disconnected: Callable[[INetConn], None]
                         ) -> Iterator[None]:
    """Call `on_disconnected` (which must not block) for each connection the swarm drops (it
    is closed and out of `get_connections` by then) while inside."""
    network = cast(Any, host.get_network())
    watcher = _ConnectionWatcher(lambda _: None, on_disconnected=on_disconnected)
    network.register_notifee(watcher)
    try:
        yield
    finally:
        network.remove_notifee(watcher)


def has_open_connection(host: IHost, peer: ID) -> bool:
    """Whether `host` holds a connection to `peer` that takes new streams."""
    return any(accepts_streams(c) for c in host.get_network().get_connections(peer))


@contextmanager
def connection_reports(host: IHost, capacity: int
                       ) -> Iterator[trio.MemoryReceiveChannel[INetConn]]:
    """While inside, each new connection is queued for reading; past `capacity` queued ones a
    report is dropped (the swarm's callback must not block)."""
    send, receive = trio.open_memory_channel[INetConn](capacity)

    def on_connected(conn: INetConn) -> None:
        try:
            send.send_nowait(conn)
        except trio.WouldBlock:
            log.debug("connection report dropped")

    with watch_connections(host, on_connected):
        yield receive


def is_inbound(conn: INetConn) -> bool:
    """True for a connection the remote peer dialled."""
    return getattr(conn, "direction", None) == Direction.INBOUND


def stream_count(conn: INetConn) -> int:
    """Streams open on `conn` (0 once it is closed)."""
    return 0 if conn.is_closed else len(conn.get_streams())


async def wait_streams_closed(host: IHost, conn: INetConn, timeout: float) -> bool:
    """Wait until no stream is open on `conn` (or it closed), at most `timeout` seconds.

    True if it drained. Event-driven: the swarm reports every stream that closes.
    """
    drained = trio.Event()

    def check() -> None:
        if stream_count(conn) == 0:
            drained.set()

    network = cast(Any, host.get_network())
    watcher = _ConnectionWatcher(lambda _: None, check)
    network.register_notifee(watcher)
    try:
        check()
        with trio.move_on_after(timeout):
            await drained.wait()
    finally:
        network.remove_notifee(watcher)
    return drained.is_set()


async def wait_direct_connection(host: IHost, peer: ID, *,
                                 besides: Sequence[INetConn] = ()) -> INetConn:
    """The first direct connection to `peer` other than `besides`: an existing one, or the
    next one added."""
    found: list[INetConn] = []
    arrived = trio.Event()

    def wanted(conn: INetConn) -> bool:
        return not is_relayed(conn) and not any(conn is other for other in besides)

    def on_connected(conn: INetConn) -> None:
        if conn.muxed_conn.peer_id == peer and wanted(conn):
            found.append(conn)
            arrived.set()

    with watch_connections(host, on_connected):
        for conn in host.get_network().get_connections(peer):
            if wanted(conn):
                return conn
        await arrived.wait()
    return found[0]


async def ping_over(host: IHost, conn: INetConn, timeout: float) -> None:
    """One libp2p ping round trip over exactly `conn` (every py-libp2p host answers ping)."""
    with map_peer_errors("ping", timeout), trio.fail_after(timeout):
        stream = await open_stream_on(host, conn, PING_PROTOCOL, timeout)
        try:
            await perform_ping_roundtrip(stream)
        except ValueError as exc:  # a pong that does not match the ping
            raise MalformedMessage(f"ping: {exc}") from exc
        finally:
            await reset_quietly(stream)


async def wait_closed(conn: INetConn) -> None:
    """Return once `conn` is closed (by either side)."""
    await cast(Any, conn).event_closed.wait()
