"""The one place that knows py-libp2p 0.8.1: host construction, stream I/O, error mapping.

Workarounds for py-libp2p pitfalls live here and only here (see docs/design.md):

- `new_libp2p_host`: the default ConnectionConfig auto-dials every known peer (min 50
  connections); meshnat nodes dial only what they are asked to.
- `concrete_addrs`: py-libp2p advertises wildcard listen addresses verbatim (`0.0.0.0`), so
  peers would dial themselves; we expand them to interface addresses.
- `DatagramTap`: py-libp2p's QUIC listener owns the node's UDP socket and hands every datagram
  to aioquic. The tap diverts meshnat datagrams (magic prefix) before QUIC sees them, so
  reflection and punch probes share the QUIC port and therefore its NAT mapping.
- `read_frame`: `stream.read()` raises StreamEOF and never returns b""; the length prefix is
  checked before the body is read (`read_varint_prefixed_bytes_limited`).
- `map_peer_errors`: py-libp2p and trio exceptions become meshnat's typed errors.
- An exception escaping a stream handler kills py-libp2p's swarm, so every handler meshnat
  registers goes through `guarded_handler`.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import multiaddr
import trio
from google.protobuf.message import DecodeError
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INotifee
from libp2p.connection_types import ConnectionType
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError, ParseError
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.io.exceptions import IncompleteReadError, IOException
from libp2p.io.exceptions import MessageTooLarge as Libp2pMessageTooLarge
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.transport.quic.connection import QUICConnection
from libp2p.transport.quic.exceptions import QUICError
from libp2p.transport.quic.listener import QUICListener
from libp2p.transport.quic.transport import QUICTransport
from libp2p.utils.address_validation import expand_wildcard_address
from libp2p.utils.varint import read_varint_prefixed_bytes_limited
from multiaddr.exceptions import Error as MultiaddrError

from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ConfigError,
    MalformedMessage,
    MeshNatError,
    MessageTooLarge,
    PeerTimeout,
    PeerUnavailable,
)
from meshnat.wire import MAX_MESSAGE_SIZE, frame_stream, is_meshnat_datagram

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose `trio-stubs` shadow trio's own annotations for
    # mypy; its TaskStatus is the one mypy then knows.
    from trio_typing import TaskStatus
else:
    TaskStatus = trio.TaskStatus

log = logging.getLogger(__name__)

__all__ = [
    "ID",
    "DatagramTap",
    "IHost",
    "INetConn",
    "INetStream",
    "KeyPair",
    "PeerInfo",
    "TProtocol",
    "TaskStatus",
    "concrete_addrs",
    "ensure_ports_free",
    "guarded_handler",
    "load_or_create_key",
    "map_peer_errors",
    "merge_peer_addrs",
    "new_libp2p_host",
    "open_stream_on",
    "parse_multiaddr",
    "parse_peer_addr",
    "read_frame",
    "remote_endpoint",
    "reset_quietly",
    "write_frame",
]


# --- identity -------------------------------------------------------------------------------


def load_or_create_key(path: Path | None) -> KeyPair:
    """Load an Ed25519 identity from `path` (libp2p protobuf form), creating it if absent.

    A new key file is written with owner-only permissions. `None` gives an ephemeral identity.
    """
    if path is None:
        return create_new_key_pair()
    if path.exists():
        try:
            private = deserialize_private_key(path.read_bytes())
        except (BaseLibp2pError, DecodeError, ValueError) as exc:
            raise ConfigError(f"key file {path} is not a libp2p private key: {exc}") from exc
        return KeyPair(private, private.get_public_key())
    pair = create_new_key_pair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.private_key.serialize())
    return pair


# --- host -----------------------------------------------------------------------------------


def new_libp2p_host(key_pair: KeyPair, listen: Sequence[multiaddr.Multiaddr]) -> IHost:
    """A py-libp2p host with TCP (Noise, Yamux) and, for /quic-v1 addresses, QUIC.

    Auto-dialling is off: a meshnat node connects only where it is told to.
    """
    quiet = ConnectionConfig(min_connections=0, low_watermark=0, high_watermark=300)
    enable_quic = any("quic-v1" in str(a) for a in listen)
    host = new_host(
        key_pair=key_pair,
        listen_addrs=list(listen),
        enable_quic=enable_quic,
        connection_config=quiet,
    )

    async def no_auto_dial() -> None:
        """Even at low_watermark=0 the AutoConnector aims for (low+high)/2 connections."""

    cast(Any, host.get_network()).auto_connector.maybe_connect = no_auto_dial
    return host


_dial_socket: contextvars.ContextVar[trio.socket.SocketType | None] = contextvars.ContextVar(
    "meshnat_quic_dial_socket", default=None)
_original_initiate = QUICConnection._initiate_connection


async def _initiate_from_bound_socket(self: Any) -> None:
    """QUICConnection._initiate_connection, but on a socket meshnat bound beforehand.

    py-libp2p always dials QUIC from a fresh port-0 socket (and its `listener_socket` path is
    broken), so the NAT mapping a peer punched is never used. Inside `quic_dial_with_source`
    the connection gets the prepared socket: bound to the listen port (SO_REUSEPORT) and
    connected to the peer, so the kernel hands the peer's packets to it, not the listener.
    """
    prepared = _dial_socket.get()
    if prepared is None or self._socket is not None:
        await _original_initiate(self)
        return
    self._socket = prepared
    self._quic.connect(self._remote_addr, now=time.time())
    await self._transmit()


setattr(QUICConnection, "_initiate_connection", _initiate_from_bound_socket)  # noqa: B010


class _TappedSocket:
    """A dial socket that hands meshnat datagrams to the node's tap instead of to QUIC.

    A socket connected to a peer receives everything that peer sends to the listen port,
    meshnat probes included; QUIC would drop them as garbage.
    """

    def __init__(self, sock: trio.socket.SocketType, tap: DatagramTap) -> None:
        self._sock, self._tap = sock, tap

    async def recvfrom(self, size: int) -> tuple[bytes, Any]:
        while True:
            data, addr = await self._sock.recvfrom(size)
            if not is_meshnat_datagram(data):
                return data, addr
            self._tap.dispatch(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def quic_dial_with_source(transport: Any, tap: DatagramTap, maddr: multiaddr.Multiaddr,
                                source: tuple[str, int]) -> Any:
    """Dial QUIC from `source` (the UDP listen endpoint): the `dial_with_source` hook the
    swarm calls for TCP, provided for QUIC."""
    parts = listen_parts(maddr)
    if parts is None:
        raise ConfigError(f"not a QUIC address: {maddr}")
    family = socket.AF_INET6 if ":" in parts[1] else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind(source)
        await sock.connect((parts[1], parts[2]))
    except OSError:
        sock.close()
        raise
    token = _dial_socket.set(cast(trio.socket.SocketType, _TappedSocket(sock, tap)))
    try:
        return await transport.dial(maddr)
    finally:
        _dial_socket.reset(token)


def enable_quic_dial_with_source(host: IHost, tap: DatagramTap) -> None:
    """Let `network.dial_addr(quic_addr, peer, source)` dial from the UDP listen port."""
    for transport in cast(Any, host.get_network()).transport_manager.get_transports():
        if isinstance(transport, QUICTransport):
            async def dial_with_source(maddr: multiaddr.Multiaddr, source: tuple[str, int],
                                       transport: Any = transport) -> Any:
                return await quic_dial_with_source(transport, tap, maddr, source)

            setattr(transport, "dial_with_source", dial_with_source)  # noqa: B010


async def close_connections(host: IHost, *, timeout: float = 5.0) -> None:
    """Close every connection and listener before the host's services are cancelled.

    Cancelling py-libp2p's swarm service alone leaves QUIC dial sockets open; its own
    `close()` tears them down deterministically.
    """
    with trio.move_on_after(timeout):
        await host.get_network().close()


def ensure_ports_free(ip: str, tcp_port: int, udp_port: int) -> None:
    """Raise ConfigError if a fixed listen port is taken.

    py-libp2p binds its listeners with SO_REUSEPORT, so a second node on a taken port would
    start without error and the kernel would split the traffic between the two. A probe bind
    without SO_REUSEPORT fails on a port already bound (for TCP, SO_REUSEADDR lets it ignore
    TIME_WAIT leftovers of an earlier run while still failing on a listener).
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for kind, port in ((socket.SOCK_STREAM, tcp_port), (socket.SOCK_DGRAM, udp_port)):
        if port == 0:
            continue
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ip, port))
            except OSError as exc:
                name = "tcp" if kind == socket.SOCK_STREAM else "udp"
                raise ConfigError(f"{name} port {port} on {ip} is not free: {exc}") from exc


def concrete_addrs(host: IHost) -> list[multiaddr.Multiaddr]:
    """The host's listen addresses with wildcards expanded, each ending in /p2p/<id>."""
    suffix = multiaddr.Multiaddr(f"/p2p/{host.get_id()}")
    out: list[multiaddr.Multiaddr] = []
    for addr in host.get_network().listeners.values():
        for bound in addr.get_addrs():
            expanded = expand_wildcard_address(bound) if _is_wildcard(bound) else [bound]
            out.extend(a.encapsulate(suffix) for a in expanded if a not in out)
    return sorted(set(out), key=str)


def _is_wildcard(addr: multiaddr.Multiaddr) -> bool:
    return any(str(addr).startswith(p) for p in ("/ip4/0.0.0.0/", "/ip6/::/"))


def parse_multiaddr(text: str) -> multiaddr.Multiaddr:
    """Parse a multiaddr; raises ConfigError with the reason."""
    try:
        return multiaddr.Multiaddr(text)
    except (MultiaddrError, ValueError) as exc:
        raise ConfigError(f"not a multiaddr: {text!r}: {exc}") from exc


def parse_peer_addr(text: str) -> PeerInfo:
    """Parse a full multiaddr ending in /p2p/<peer id>; raises ConfigError otherwise."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except (MultiaddrError, BaseLibp2pError, ValueError) as exc:
        raise ConfigError(f"not a peer multiaddr (…/p2p/<peer id>): {text!r}") from exc


def merge_peer_addrs(addrs: Sequence[multiaddr.Multiaddr | str]) -> list[PeerInfo]:
    """One PeerInfo per peer id from multiaddrs ending in /p2p/<id>, in first-seen order."""
    merged: dict[ID, PeerInfo] = {}
    for addr in addrs:
        info = parse_peer_addr(str(addr))
        if info.peer_id in merged:
            merged[info.peer_id].addrs.extend(a for a in info.addrs
                                              if a not in merged[info.peer_id].addrs)
        else:
            merged[info.peer_id] = info
    return list(merged.values())


def listen_parts(addr: multiaddr.Multiaddr) -> tuple[str, str, int] | None:
    """(`tcp`|`udp`, ip, port) of an /ip4|ip6/…/tcp|udp/… multiaddr (port may be 0), or None."""
    parts = {proto.name: value for proto, value in addr.items()}
    ip = parts.get("ip4") or parts.get("ip6")
    transport = "tcp" if "tcp" in parts else "udp" if "udp" in parts else None
    if ip is None or transport is None:
        return None
    return transport, str(ip), int(parts[transport])


def tcp_first(peer: PeerInfo) -> PeerInfo:
    """The same peer with its TCP addresses first (cheap to try; QUIC may be blocked)."""
    if not peer.addrs:
        raise ConfigError(f"no address known for {peer.peer_id}")
    return PeerInfo(peer.peer_id, sorted(peer.addrs, key=lambda a: "/tcp/" not in str(a)))


def endpoint_of(addr: multiaddr.Multiaddr) -> tuple[str, Endpoint] | None:
    """(`tcp`|`udp`, endpoint) of an /ip4|ip6/…/tcp|udp/… multiaddr with a real port, or None."""
    parts = listen_parts(addr)
    if parts is None or parts[2] == 0:
        return None
    transport, ip, port = parts
    return transport, Endpoint.parse(f"[{ip}]:{port}")


@contextmanager
def single_exception() -> Iterator[None]:
    """Unwrap the ExceptionGroups py-libp2p's nested nurseries build around one real error.

    A group whose leaves (other than trio.Cancelled) are all one exception is replaced by that
    exception; anything else is re-raised as it is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = {id(e): e for e in _leaves(group) if not isinstance(e, trio.Cancelled)}
        if len(leaves) == 1:
            (only,) = leaves.values()
            raise only from only.__cause__
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


# --- streams --------------------------------------------------------------------------------


@contextmanager
def map_peer_errors(stage: str, timeout: float | None = None) -> Iterator[None]:
    """Map py-libp2p and trio failures of one peer interaction onto meshnat's errors."""
    try:
        yield
    except MeshNatError:
        raise  # already mapped (PeerTimeout is an OSError too)
    except trio.TooSlowError as exc:
        raise PeerTimeout(stage, timeout) from exc
    except Libp2pMessageTooLarge as exc:
        raise MessageTooLarge(MAX_MESSAGE_SIZE + 1, MAX_MESSAGE_SIZE) from exc
    except ParseError as exc:
        raise MalformedMessage(f"{stage}: bad length prefix: {exc}") from exc
    except (
        StreamError,
        MuxedStreamError,
        IncompleteReadError,
        IOException,
        SwarmException,
        trio.BrokenResourceError,
        trio.ClosedResourceError,
        OSError,
        BaseLibp2pError,  # dial, security and protocol negotiation failures
        QUICError,  # py-libp2p's QUIC errors have their own root
    ) as exc:
        raise PeerUnavailable(f"{stage}: {type(exc).__name__}: {exc}") from exc


async def read_frame(stream: INetStream) -> bytes:
    """Read one uvarint-prefixed frame, rejecting a prefix over MAX_MESSAGE_SIZE before reading."""
    return await read_varint_prefixed_bytes_limited(stream, MAX_MESSAGE_SIZE)


async def write_frame(stream: INetStream, payload: bytes) -> None:
    await stream.write(frame_stream(payload))


async def open_stream_on(host: IHost, conn: INetConn, protocol: TProtocol,
                         timeout: float) -> INetStream:
    """Open a `protocol` stream on exactly `conn` (host.new_stream picks a connection itself)."""
    stream = await conn.new_stream()
    negotiated = False
    try:
        selected = await cast(Any, host).multiselect_client.select_one_of(
            [protocol], MultiselectCommunicator(stream), max(1, int(timeout))
        )
        negotiated = True
    finally:
        if not negotiated:
            with trio.CancelScope(shield=True):
                await reset_quietly(stream)
    stream.set_protocol(selected)
    return stream


def is_relayed(stream: INetStream | INetConn) -> bool:
    """True for a stream or connection over a circuit relay."""
    kind = getattr(stream.muxed_conn, "get_connection_type", None)
    return kind is not None and kind() == ConnectionType.RELAYED


class _ConnectionWatcher(INotifee):
    """Calls `on_connected(conn)` for every connection the swarm adds."""

    def __init__(self, on_connected: Callable[[INetConn], None]) -> None:
        self._on_connected = on_connected

    async def connected(self, network: Any, conn: INetConn) -> None:
        self._on_connected(conn)

    async def disconnected(self, network: Any, conn: INetConn) -> None: ...
    async def opened_stream(self, network: Any, stream: INetStream) -> None: ...
    async def closed_stream(self, network: Any, stream: INetStream) -> None: ...
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


async def wait_direct_connection(host: IHost, peer: ID) -> INetConn:
    """The first direct connection to `peer`: an existing one, or the next one added."""
    found: list[INetConn] = []
    arrived = trio.Event()

    def on_connected(conn: INetConn) -> None:
        if conn.muxed_conn.peer_id == peer and not is_relayed(conn):
            found.append(conn)
            arrived.set()

    with watch_connections(host, on_connected):
        for conn in host.get_network().get_connections(peer):
            if not is_relayed(conn):
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


def remote_endpoint(stream: INetStream) -> Endpoint | None:
    """The source address of the connection under `stream`, as the transport saw it.

    None over a relay: py-libp2p then reports the relay's address, not the peer's.
    """
    addr = None if is_relayed(stream) else stream.get_remote_address()
    if addr is None:
        return None
    return Endpoint.from_sockaddr(addr)


def transport_of(stream: INetStream | INetConn) -> str:
    """`udp` for a QUIC connection, `tcp` otherwise."""
    return "udp" if isinstance(stream.muxed_conn, QUICConnection) else "tcp"


def connection_remote(conn: INetConn) -> Endpoint | None:
    """The transport address of the peer on a direct connection."""
    addr = cast(Any, conn.muxed_conn).get_remote_address()
    return Endpoint.from_sockaddr(addr) if addr else None


def stream_peer(stream: INetStream) -> ID:
    return stream.muxed_conn.peer_id


async def reset_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception as exc:  # the stream is being discarded; any failure is moot
            log.debug("reset failed: %s", exc)


def guarded_handler(
    name: str, handler: Callable[[INetStream], Awaitable[None]]
) -> Callable[[INetStream], Awaitable[None]]:
    """Wrap a stream handler so nothing escapes into py-libp2p (which would kill the swarm)."""

    async def run(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception:  # reaching this is a meshnat bug: log it, keep the node alive
            log.error("%s: handler bug", name, exc_info=True)
            await reset_quietly(stream)

    return run


# --- UDP ------------------------------------------------------------------------------------

DatagramHandler = Callable[[bytes, Endpoint], None]


class DatagramTap:
    """Meshnat datagrams on the UDP socket of py-libp2p's QUIC listener.

    Incoming datagrams with the meshnat magic are handed to every subscriber (without blocking:
    subscribers queue and drop); everything else goes on to QUIC untouched.
    """

    def __init__(self, host: IHost) -> None:
        listeners = [
            lst for lst in host.get_network().listeners.values() if isinstance(lst, QUICListener)
        ]
        if not listeners:
            raise ConfigError("the node has no QUIC (UDP) listener to share")
        self._listener: Any = listeners[0]
        self._handlers: list[DatagramHandler] = []
        original = self._listener._process_packet

        async def process_packet(data: bytes, addr: tuple[str, int]) -> None:
            if is_meshnat_datagram(data):
                self.dispatch(data, addr)
            else:
                await original(data, addr)

        setattr(self._listener, "_process_packet", process_packet)  # noqa: B010

    @property
    def local_endpoint(self) -> Endpoint:
        return Endpoint.from_sockaddr(self._listener._socket.getsockname())

    def subscribe(self, handler: DatagramHandler) -> Callable[[], None]:
        """Call `handler(data, src)` for each meshnat datagram; returns the unsubscribe call."""
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler)

    async def sendto(self, data: bytes, dst: Endpoint) -> None:
        sock = self._listener._socket
        if sock is None:
            raise PeerUnavailable("the node's UDP socket is closed")
        await sock.sendto(data, dst.to_sockaddr())

    def dispatch(self, data: bytes, addr: tuple[str, int]) -> None:
        """Hand one meshnat datagram to every subscriber."""
        src = Endpoint.from_sockaddr(addr)
        for handler in tuple(self._handlers):
            handler(data, src)
