"""TCP dials from the listen port (hole punching), and py-libp2p's leak on cancelling one.

`dial_tcp_from` is the TCP path of a punch: a dial bound to the TCP listen port (SO_REUSEPORT,
as the listener), so the peer's NAT sees the mapping it was told about; when both sides dial at
once it is a TCP simultaneous open, and `Swarm.dial_addr_as_responder` gives the second side
Noise's responder role (two Noise initiators on one connection would stall).

`libp2p.transport.tcp.tcp._open_tcp_stream_from` (used for TCP hole punching) closes its socket
when bind or connect raise OSError, but not when the dial is cancelled, which is how the losing
path of a punch race ends: the socket leaked (a ResourceWarning, and an fd per lost race). The
replacement below is the same dial, closing the socket on any exit but success.

IPv6 sockets are IPv6-only (`IPV6_V6ONLY`), listeners and dials alike: a dual-stack node has
one listener per family on the same port, and Linux's default (`bindv6only=0`) would let the
`[::]` socket, sharing the port through SO_REUSEPORT, take IPv4 connections meant for the
`0.0.0.0` one.

A dial from the listen port to a peer's listen endpoint fails with EADDRNOTAVAIL when a socket
already holds that four-tuple (the peer's own connection between the same two endpoints, still
being upgraded, or one in TIME_WAIT): `FourTupleTaken`, which the caller resolves
(`meshnat.listen_port`). A dial from a fresh port (`source` port 0) binds the IP only
(`IP_BIND_ADDRESS_NO_PORT`, no reuse flags): the kernel then picks the port at connect() for
the destination, so it cannot pick a port whose four-tuple is taken. py-libp2p logs every failed
TCP dial at ERROR although the caller gets the error (`OpenConnectionError`) and handles it:
those records are DEBUG here.

py-libp2p's `TrioTCPStream.get_remote_address` returns None for every IPv6 connection (it
accepts only the 2-tuple IPv4 `getpeername()` gives, not IPv6's 4-tuple), which would leave an
IPv6 peer without a source network (admission, rate limits) and its IP unproven; the
replacement below takes both.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from typing import Any, cast

import multiaddr
import trio
from libp2p.abc import IHost, INetConn
from libp2p.io.trio import TrioTCPStream
from libp2p.peer.id import ID
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp import tcp as _tcp

from meshnat._libp2p.dial import dial_once
from meshnat._libp2p.streams import map_peer_errors
from meshnat.endpoint import Endpoint

_original = _tcp._open_tcp_stream_from
_original_reuse_flags = _tcp._set_reuse_flags
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2


class FourTupleTaken(OpenConnectionError):
    """A dial from a given source port found its four-tuple held by another socket."""


def four_tuple_taken(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is a `FourTupleTaken`."""
    seen: BaseException | None = exc
    for _ in range(8):  # py-libp2p wraps a dial's error two or three times
        if seen is None:
            return False
        if isinstance(seen, FourTupleTaken):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _DialFailuresAtDebug(logging.Filter):
    """py-libp2p's ERROR record of a failed TCP dial, as DEBUG: the dialler gets the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if record.levelno == logging.ERROR and ("opening TCP stream" in text
                                                or "Failed to open TCP stream" in text):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_DIAL_LOG_FILTER = _DialFailuresAtDebug()


def _set_reuse_flags(sock: trio.socket.SocketType) -> None:
    """py-libp2p's SO_REUSEADDR/SO_REUSEPORT, plus IPV6_V6ONLY on an IPv6 socket."""
    _original_reuse_flags(sock)
    _set_v6only(sock)


def _set_v6only(sock: trio.socket.SocketType) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


async def _open_tcp_stream_from(host: str, port: int, source: tuple[str, int]
                                ) -> trio.SocketStream:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    if (":" in source[0]) != (":" in host):
        return await _original(host, port, source)  # py-libp2p's own error for this case
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        if source[1]:
            _tcp._set_reuse_flags(sock)  # shares the listener's port
        else:
            _set_v6only(sock)
            with contextlib.suppress(OSError):  # the port is picked at connect()
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        try:
            await sock.bind(source)
        except OSError:  # the platform will not share the port: py-libp2p's fallback
            sock.close()
            return await _original(host, port, source)
        try:
            await sock.connect((host, port))
        except OSError as exc:
            kind = FourTupleTaken if source[1] and exc.errno == errno.EADDRNOTAVAIL \
                else OpenConnectionError
            raise kind(
                f"Failed to connect {host}:{port} from {source[0]}:{source[1]}: {exc}") from exc
        return trio.SocketStream(sock)
    except BaseException:
        sock.close()
        raise


async def dial_tcp_from(host: IHost, peer: ID, remote: Endpoint, source: Endpoint, *,
                        as_responder: bool = False, retries: bool = True) -> INetConn:
    """TCP to `remote` from the local `source` endpoint, upgraded (Noise) against `peer`.

    `as_responder`: the simultaneous open's second side, Noise responder (one attempt).
    `retries`: py-libp2p's retries of a failed dial (3, after 0.1/0.2/0.4 s); without them one
    attempt, as a dial charged to a send budget must be. Raises PeerUnavailable/PeerTimeout.
    """
    address = multiaddr.Multiaddr(
        f"/ip{remote.ip.version}/{remote.ip}/tcp/{remote.port}/p2p/{peer}")
    network, sockaddr = host.get_network(), source.to_sockaddr()
    with map_peer_errors(f"tcp open to {remote}"):
        if as_responder:
            conn = await network.dial_addr_as_responder(address, peer, sockaddr)
        elif retries:
            conn = await network.dial_addr(address, peer, sockaddr)
        else:
            conn = await dial_once(network, address, peer, sockaddr)
    return conn


def _remote_address(self: TrioTCPStream) -> tuple[str, int] | None:
    """(host, port) of the peer, IPv4 or IPv6 (a scope id is dropped); None once the socket
    is gone. Cached on first success, as py-libp2p's own does."""
    cached: tuple[str, int] | None = self._cached_remote_address
    if cached is not None:
        return cached
    try:
        peer = self.stream.socket.getpeername()
    except (AttributeError, OSError):
        return None
    if not isinstance(peer, tuple) or len(peer) not in (2, 4):
        return None
    self._cached_remote_address = (str(peer[0]), int(peer[1]))
    return self._cached_remote_address


def connection_local(conn: INetConn) -> Endpoint | None:
    """This node's end of a direct TCP connection (None for QUIC, relayed or closed ones):
    through py-libp2p 0.8.1's layers (Yamux, Noise, RawConnection, TrioTCPStream) to the socket.
    """
    layer: Any = conn.muxed_conn
    for name in ("secured_conn", "conn", "read_writer", "read_write_closer", "stream", "stream",
                 "socket"):
        layer = getattr(layer, name, None)
        if layer is None:
            return None
    try:
        local = layer.getsockname()
    except (AttributeError, OSError):
        return None
    if not isinstance(local, tuple) or len(local) not in (2, 4):
        return None
    return Endpoint.from_sockaddr((str(local[0]), int(local[1])))


def dial_from_listen_ip(host: IHost, ip: str) -> None:
    """Make `host`'s TCP dials leave from `ip` (its listen address) rather than whichever
    address the kernel picks: on a multi-homed host (or several loopback addresses) peers then
    see the address the node listens on, as they do for its QUIC dials. A dial that cannot
    leave from `ip` (no route from it) is made unbound, as before."""
    for transport in cast(Any, host.get_network()).transport_manager.get_transports():
        if isinstance(transport, _tcp.TCP):
            plain = transport.dial

            async def dial(maddr: multiaddr.Multiaddr, transport: Any = transport,
                           plain: Any = plain) -> Any:
                try:
                    return await transport.dial_with_source(maddr, (ip, 0))
                except OpenConnectionError:
                    return await plain(maddr)

            transport.dial = dial  # type: ignore[method-assign]


def install() -> None:
    """Use the leak-free dial for every TCP dial with a source port, and IPv6-only IPv6
    sockets (py-libp2p's listeners and source-bound dials both set their flags there)."""
    module: Any = _tcp
    module._open_tcp_stream_from = _open_tcp_stream_from
    module._set_reuse_flags = _set_reuse_flags
    if _DIAL_LOG_FILTER not in _tcp.logger.filters:
        _tcp.logger.addFilter(_DIAL_LOG_FILTER)
    setattr(TrioTCPStream, "get_remote_address", _remote_address)  # noqa: B010


install()
