"""meshnat's QUIC transport for py-libp2p's swarm (/quic-v1): qh3, one socket per listener.

Wire-compatible with libp2p QUIC (RFC 9000 v1, ALPN "libp2p", the libp2p TLS certificate,
both sides authenticated). Dials leave from a listening socket of the same address family
when there is one (as go-libp2p does), so the peer sees the listen port; `dial_with_source`
picks the listener bound to a given port (hole punching). Without a listener, dials use one
ephemeral socket per family. IPv6 sockets are IPv6-only (`IPV6_V6ONLY`): a dual-stack node
listens on `0.0.0.0:P` and `[::]:P` with one socket each.
"""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import multiaddr
import trio
from libp2p.abc import IListener, ITransport
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import THandler
from libp2p.peer.id import ID
from libp2p.transport.exceptions import OpenConnectionError

from meshnat._libp2p.quic.connection import QuicConn
from meshnat._libp2p.quic.endpoint import QuicEndpoint, Tap
from meshnat._libp2p.quic.tls import configuration, libp2p_certificate
from meshnat._libp2p.quic.warmup import warm_up

PROTOCOL = "quic-v1"
DIAL_TIMEOUT = 10.0
STREAM_WINDOW = 8 << 20
"""Per-stream receive window (bytes); the connection's is four times this."""
IDLE_TIMEOUT = 60.0
"""Seconds without a packet after which a connection is dead (keepalives every 15 s)."""


def udp_parts(maddr: multiaddr.Multiaddr) -> tuple[str, int, ID | None]:
    """(ip, port, peer id or None) of /ip4|ip6/…/udp/…/quic-v1[/p2p/…]; ValueError otherwise."""
    parts = {proto.name: value for proto, value in maddr.items()}
    ip = parts.get("ip4") or parts.get("ip6")
    if ip is None or "udp" not in parts or PROTOCOL not in parts:
        raise ValueError("not a /quic-v1 address")
    peer = parts.get("p2p")
    return str(ip), int(parts["udp"]), None if peer is None else ID.from_base58(str(peer))


class QuicTransport(ITransport):
    """libp2p QUIC on qh3. py-libp2p's swarm hands it its background nursery."""

    provides_native_muxing = True

    def __init__(self, key_pair: KeyPair, *, read_timeout: float | None = None) -> None:
        certificate = libp2p_certificate(key_pair.private_key)
        limits: dict[str, Any] = {"max_stream_data": STREAM_WINDOW,
                                  "max_data": 4 * STREAM_WINDOW, "idle_timeout": IDLE_TIMEOUT}
        self._client = configuration(certificate, is_client=True, **limits)
        self._server = configuration(certificate, is_client=False, **limits)
        self._read_timeout = read_timeout
        self._nursery: trio.Nursery | None = None
        self.listeners: list[QuicListener] = []
        self._dialers: dict[int, QuicEndpoint] = {}
        self._dialer_lock = trio.Lock()
        self.tap: Tap | None = None
        """Sees every datagram on the sockets `dial_with_source` binds (`QuicEndpoint.tap`)."""

    def set_background_nursery(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._warm_up)

    async def _warm_up(self) -> None:
        """qh3's first handshake in a process is slow: run one in memory now (`warmup`)."""
        await trio.to_thread.run_sync(  # type: ignore[call-arg]
            partial(warm_up, self._client, self._server),
            abandon_on_cancel=True)

    def set_swarm(self, swarm: object) -> None:
        """The swarm offers itself; nothing here needs it."""

    def can_dial(self, maddr: multiaddr.Multiaddr) -> bool:
        return _is_quic(maddr)

    def can_listen(self, maddr: multiaddr.Multiaddr) -> bool:
        return _is_quic(maddr)

    def protocols(self) -> list[str]:
        return [PROTOCOL]

    def listen_order(self) -> int:
        return 1

    def create_listener(self, handler_function: THandler) -> QuicListener:
        listener = QuicListener(self, handler_function)
        self.listeners.append(listener)
        return listener

    async def dial(self, maddr: multiaddr.Multiaddr) -> QuicConn:  # type: ignore[override]
        """Connect to `maddr` (its /p2p/ peer id is checked when present)."""
        ip, port, peer = self._target(maddr)
        endpoint = self._listening_endpoint(_family(ip), None) or await self._dialer(_family(ip))
        return await self._dial(endpoint, ip, port, peer)

    async def dial_with_source(self, maddr: multiaddr.Multiaddr,
                               source: tuple[str, int]) -> QuicConn:
        """Connect from `source`: the listening socket bound to its port, or else a socket of
        its own bound there for this connection (closed with it)."""
        ip, port, peer = self._target(maddr)
        endpoint = self._listening_endpoint(_family(ip), source[1])
        if endpoint is not None:
            return await self._dial(endpoint, ip, port, peer)
        sock = _udp_socket(_family(ip))
        try:
            sock.bind(source)
        except OSError as exc:
            sock.close()
            raise OpenConnectionError(f"cannot dial QUIC from port {source[1]}: {exc}") from exc
        endpoint = QuicEndpoint(sock, client=self._client, server=None,
                                read_timeout=self._read_timeout)
        endpoint.tap = self.tap
        await self.start(endpoint)
        try:
            conn = await self._dial(endpoint, ip, port, peer)
        except BaseException:
            await endpoint.close()
            raise
        endpoint.spawn(lambda: _close_after(conn, endpoint))
        return conn

    async def close(self) -> None:
        for listener in list(self.listeners):
            await listener.close()
        for endpoint in self._dialers.values():
            await endpoint.close()
        self._dialers.clear()

    def endpoint(self, sock: socket.socket, tap: Tap | None = None) -> QuicEndpoint:
        """A server-capable endpoint on `sock` (bound) with this transport's identity."""
        endpoint = QuicEndpoint(sock, client=self._client, server=self._server,
                                read_timeout=self._read_timeout)
        endpoint.tap = tap
        return endpoint

    async def start(self, endpoint: QuicEndpoint) -> None:
        """Serve `endpoint` in the swarm's nursery; if that fails (a cancelled dial too), its
        socket is closed."""
        try:
            if self._nursery is None:
                raise OpenConnectionError("the QUIC transport has not been started by a swarm")
            await self._nursery.start(endpoint.serve)
        except BaseException:
            with trio.CancelScope(shield=True):
                await endpoint.close()
            raise

    def _target(self, maddr: multiaddr.Multiaddr) -> tuple[str, int, ID | None]:
        try:
            return udp_parts(maddr)
        except ValueError as exc:
            raise OpenConnectionError("not a QUIC address") from exc

    def _listening_endpoint(self, family: int, port: int | None) -> QuicEndpoint | None:
        for listener in self.listeners:
            endpoint = listener.endpoint
            if endpoint is not None and endpoint.sock.family == family and \
                    (port is None or endpoint.local_address[1] == port):
                return endpoint
        return None

    async def _dialer(self, family: int) -> QuicEndpoint:
        """The socket dials of `family` leave from when no listener has that family: one,
        made by the first dial that needs it. (Two dials at once used to make one each, and
        the first one's socket was never closed.)"""
        async with self._dialer_lock:
            if family not in self._dialers:
                sock = _udp_socket(family)
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                endpoint = QuicEndpoint(sock, client=self._client, server=None,
                                        read_timeout=self._read_timeout)
                await self.start(endpoint)
                self._dialers[family] = endpoint
            return self._dialers[family]

    async def _dial(self, endpoint: QuicEndpoint, ip: str, port: int,
                    peer: ID | None) -> QuicConn:
        try:
            return await endpoint.dial((ip, port), peer, timeout=DIAL_TIMEOUT)
        except OSError as exc:
            raise OpenConnectionError(f"quic dial to {ip}:{port} failed: {exc}") from exc


class QuicListener(IListener):
    """A UDP socket accepting libp2p QUIC connections (and dialling from its port)."""

    def __init__(self, transport: QuicTransport, handler: THandler) -> None:
        self.transport, self._handler = transport, handler
        self.endpoint: QuicEndpoint | None = None
        self._addr: multiaddr.Multiaddr | None = None
        self.tap: Tap | None = None
        """Set before `listen`, or on `endpoint` after: sees every datagram first."""

    async def listen(self, maddr: multiaddr.Multiaddr) -> None:
        """Bind `maddr`'s address (OSError if taken) and start accepting."""
        ip, port, _ = udp_parts(maddr)
        sock = _udp_socket(_family(ip))
        try:
            sock.bind((ip, port))
        except OSError:
            sock.close()
            raise
        endpoint = self.transport.endpoint(sock, self.tap)
        endpoint.on_accept = self._accepted
        await self.transport.start(endpoint)
        self.endpoint = endpoint

    def _accepted(self, conn: QuicConn) -> None:
        handler = self._handler
        conn.endpoint.spawn(lambda: handler(conn))  # type: ignore[arg-type]

    def get_addrs(self) -> tuple[multiaddr.Multiaddr, ...]:
        if self.endpoint is None:
            return ()
        if self._addr is None:  # the socket is bound once: its address is parsed once
            ip, port = self.endpoint.local_address
            family = "ip6" if ":" in ip else "ip4"
            self._addr = multiaddr.Multiaddr(f"/{family}/{ip}/udp/{port}/{PROTOCOL}")
        return (self._addr,)

    async def close(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
        if self in self.transport.listeners:
            self.transport.listeners.remove(self)


async def _close_after(conn: QuicConn, endpoint: QuicEndpoint) -> None:
    await conn.closed.wait()
    await endpoint.close()


def _is_quic(maddr: multiaddr.Multiaddr) -> bool:
    try:
        udp_parts(maddr)
    except ValueError:
        return False
    return True


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _udp_socket(family: int) -> socket.socket:
    """A UDP socket of `family`; an IPv6 one takes IPv6 only (no IPv4-mapped traffic)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock
