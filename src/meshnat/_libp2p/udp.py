"""The node's UDP socket, shared with py-libp2p's QUIC: the datagram tap and QUIC dials from it."""

from __future__ import annotations

import contextvars
import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any, cast

import multiaddr
import trio
from libp2p.abc import IHost, INetConn
from libp2p.peer.id import ID
from libp2p.transport.quic.connection import QUICConnection
from libp2p.transport.quic.exceptions import QUICError
from libp2p.transport.quic.listener import QUICListener
from libp2p.transport.quic.transport import QUICTransport

from meshnat._libp2p.host import listen_parts
from meshnat._libp2p.quic import QuicConn, QuicEndpoint, QuicListener
from meshnat._libp2p.streams import map_peer_errors
from meshnat.endpoint import Endpoint, udp_source
from meshnat.errors import (
    ConfigError,
    PeerUnavailable,
)
from meshnat.wire import is_meshnat_datagram

log = logging.getLogger(__name__)


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
    """Let `network.dial_addr(quic_addr, peer, source)` dial from the UDP listen port
    (meshnat's own QUIC transport does that already: its dials share the listener's socket)."""
    for transport in cast(Any, host.get_network()).transport_manager.get_transports():
        if isinstance(transport, QUICTransport):
            async def dial_with_source(maddr: multiaddr.Multiaddr, source: tuple[str, int],
                                       transport: Any = transport) -> Any:
                return await quic_dial_with_source(transport, tap, maddr, source)

            setattr(transport, "dial_with_source", dial_with_source)  # noqa: B010



async def dial_quic_from(host: IHost, peer: ID, remote: Endpoint, source: Endpoint) -> INetConn:
    """QUIC to `remote` from the local `source` endpoint (whose NAT mapping was punched);
    TLS checks that the other end is `peer`."""
    address = multiaddr.Multiaddr(
        f"/ip{remote.ip.version}/{remote.ip}/udp/{remote.port}/quic-v1/p2p/{peer}")
    with map_peer_errors(f"quic from {source} to {remote}"):
        conn: INetConn = await host.get_network().dial_addr(address, peer, source.to_sockaddr())
    return conn


async def listen_quic(host: IHost, ip: IPv4Address | IPv6Address, port: int) -> str:
    """Add a QUIC listener on `ip:port` next to the node's own; returns its key for
    `close_listener`. Raises OSError(EADDRINUSE) when the port is taken.

    py-libp2p's `Swarm.listen` reports a bind failure as an ExceptionGroup (or False) and
    leaves the failed listener registered, so it is checked and cleaned up here.
    """
    address = multiaddr.Multiaddr(f"/ip{ip.version}/{ip}/udp/{port}/quic-v1")
    key = str(address)
    network = cast(Any, host.get_network())
    if key in network.listeners:
        raise OSError(errno.EADDRINUSE, f"already listening on {address}")
    listening = False
    try:
        listening = bool(await network.listen(address))
    except (BaseExceptionGroup, QUICError, OSError) as exc:
        log.debug("quic listen on %s failed: %r", address, exc)
    finally:
        if not listening and key in network.listeners:  # failed or cancelled: unregister
            with trio.CancelScope(shield=True):
                await close_listener(host, key)
    if not listening or key not in network.listeners:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {address}")
    return key


async def close_listener(host: IHost, key: str) -> None:
    """Close a listener `listen_quic` added (its connections close with it)."""
    listener = cast(Any, host.get_network()).listeners.pop(key, None)
    if listener is not None:
        await listener.close()


def local_port(conn: INetConn) -> int | None:
    """The local UDP port of a QUIC connection (None for other transports)."""
    if isinstance(conn.muxed_conn, QuicConn):
        return conn.muxed_conn.endpoint.local_address[1]
    sock = getattr(conn.muxed_conn, "_socket", None)
    return None if sock is None else int(sock.getsockname()[1])


# --- UDP ------------------------------------------------------------------------------------

def _quic_addr(remote: Endpoint) -> tuple[str, int]:
    """`remote` as the QUIC endpoint keys a dial's connection (the multiaddr's address)."""
    return str(remote.ip), remote.port


DatagramHandler = Callable[[bytes, Endpoint], None]


@dataclass(slots=True)
class TapStatistics:
    """What the tap did with the datagrams that reached the node's UDP port."""

    dispatched: int = 0
    """Meshnat datagrams handed to the subscribers."""
    impossible_sources: int = 0
    """Datagrams dropped before QUIC or meshnat saw them: port 0, an unspecified, multicast
    or broadcast source (endpoint.udp_source)."""
    handler_errors: int = 0
    """Subscriber calls that raised (a meshnat bug; the datagram is dropped, the port goes on)."""


class DatagramTap:
    """Meshnat datagrams on the UDP socket of the node's QUIC listener (py-libp2p's or
    meshnat's own, `quic`).

    Every datagram from an impossible source (`endpoint.udp_source`) is dropped and counted
    first, before QUIC sees it. Incoming datagrams with the meshnat magic are handed to every
    subscriber (without blocking: subscribers queue and drop); everything else goes on to QUIC
    untouched. Nothing a datagram does raises into py-libp2p's receive loop, which sleeps
    10 ms after each error (a flood of errors would silence the port).
    """

    def __init__(self, host: IHost) -> None:
        listeners = [lst for lst in host.get_network().listeners.values()
                     if isinstance(lst, QUICListener | QuicListener)]
        if not listeners:
            raise ConfigError("the node has no QUIC (UDP) listener to share")
        self._listener: Any = listeners[0]
        self._handlers: list[DatagramHandler] = []
        self._failed: set[int] = set()
        self._stats = TapStatistics()
        self._endpoints: dict[int, QuicEndpoint] = {}
        """meshnat's QUIC: the listening endpoint of each address family (4, 6)."""
        self._last_addr: object = None
        self._last_src: Endpoint | None = None
        if isinstance(self._listener, QuicListener):
            for listener in listeners:
                endpoint = listener.endpoint if isinstance(listener, QuicListener) else None
                if endpoint is not None:
                    version = 6 if endpoint.sock.family == socket.AF_INET6 else 4
                    self._endpoints.setdefault(version, endpoint)
                    endpoint.tap = self._claim
            self._listener.transport.tap = self._claim  # dials from other ports, too
            return
        original = self._listener._process_packet

        async def process_packet(data: bytes, addr: tuple[str, int]) -> None:
            src = udp_source(addr)
            if src is None:
                self._drop_impossible(addr)
            elif is_meshnat_datagram(data):
                self._dispatch(data, src)
            else:
                await original(data, addr)

        setattr(self._listener, "_process_packet", process_packet)  # noqa: B010

    @property
    def versions(self) -> frozenset[int]:
        """The IP versions this port can send to (4, 6): one listening socket each."""
        return frozenset(self._endpoints) if self._endpoints else frozenset({4})

    def replay_first_flight(self, remote: Endpoint) -> bool:
        """Send the first flight of meshnat's QUIC dial to `remote` from this port again, if
        it is still unanswered (`QuicConn.replay_first_flight`); False if there is none."""
        endpoint = self._endpoints.get(remote.ip.version)
        return endpoint is not None and endpoint.replay_first_flight(_quic_addr(remote))

    def silence_dial(self, remote: Endpoint) -> None:
        """The dial to `remote` from this port, if unanswered, ends without CONNECTION_CLOSE."""
        endpoint = self._endpoints.get(remote.ip.version)
        if endpoint is not None:
            endpoint.silence_dial(_quic_addr(remote))

    def subscribe(self, handler: DatagramHandler) -> Callable[[], None]:
        """Call `handler(data, src)` for each meshnat datagram; returns the unsubscribe call."""
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler)

    def statistics(self) -> TapStatistics:
        return replace(self._stats)

    def _claim(self, data: bytes, addr: tuple[str, int]) -> bool:
        """meshnat's QUIC endpoint asks first: True for what QUIC must not see.

        The last source that passed `udp_source` is remembered (one entry): a QUIC transfer
        brings thousands of datagrams a second from one address, and parsing it for each was
        a third of the receiver's CPU."""
        src = self._last_src if addr == self._last_addr else None
        if src is None:
            src = udp_source(addr)
            if src is None:
                self._drop_impossible(addr)
                return True
            self._last_addr, self._last_src = addr, src
        if is_meshnat_datagram(data):
            self._dispatch(data, src)
            return True
        return False

    async def sendto(self, data: bytes, dst: Endpoint) -> None:
        """Send from the node's UDP port of `dst`'s family; PeerUnavailable if the node has
        no socket of that family (callers keep to `versions`) or it is closed."""
        if self._endpoints:
            endpoint = self._endpoints.get(dst.ip.version)
            if endpoint is None:
                raise PeerUnavailable(f"the node has no IPv{dst.ip.version} UDP socket")
            if endpoint.sock.fileno() == -1:
                raise PeerUnavailable("the node's UDP socket is closed")
            endpoint.send_datagrams([(data, dst.to_sockaddr())])
            await trio.lowlevel.checkpoint()
            return
        sock = self._listener._socket
        if sock is None:
            raise PeerUnavailable("the node's UDP socket is closed")
        await sock.sendto(data, dst.to_sockaddr())

    def dispatch(self, data: bytes, addr: tuple[str, int]) -> None:
        """Hand one meshnat datagram to every subscriber (dropped if its source is impossible)."""
        src = udp_source(addr)
        if src is None:
            self._drop_impossible(addr)
        else:
            self._dispatch(data, src)

    def _drop_impossible(self, addr: object) -> None:
        self._stats.impossible_sources += 1
        log.debug("udp: dropped a datagram from an impossible source %.60s", addr)

    def _dispatch(self, data: bytes, src: Endpoint) -> None:
        self._stats.dispatched += 1
        for handler in tuple(self._handlers):
            try:
                handler(data, src)
            except Exception:  # our bug: this datagram is lost, the port and the others go on
                self._stats.handler_errors += 1
                if id(handler) not in self._failed:  # once per handler: no log per packet
                    self._failed.add(id(handler))
                    log.error("udp: datagram handler %r failed (later failures are only "
                              "counted)", handler, exc_info=True)
