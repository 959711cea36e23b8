"""py-libp2p streams: framing, exactly-one-connection streams, error mapping, guarded handlers."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError, ParseError
from libp2p.io.exceptions import IncompleteReadError, IOException
from libp2p.io.exceptions import MessageTooLarge as Libp2pMessageTooLarge
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError
from libp2p.transport.quic.connection import QUICConnection
from libp2p.transport.quic.exceptions import QUICError
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from meshnat._libp2p.quic import QuicConn
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    MalformedMessage,
    MeshNatError,
    MessageTooLarge,
    PeerTimeout,
    PeerUnavailable,
)
from meshnat.limits import RELAYED, SlotLimit, network_of
from meshnat.wire import MAX_MESSAGE_SIZE, frame_stream

log = logging.getLogger(__name__)


def is_relayed(stream: INetStream | INetConn) -> bool:
    """True for a stream or connection over a circuit relay."""
    kind = getattr(stream.muxed_conn, "get_connection_type", None)
    return kind is not None and kind() == ConnectionType.RELAYED


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


async def close_write(stream: INetStream) -> None:
    """End our side of `stream` and keep reading (py-libp2p's `NetStream.close_write`; its
    `close()` over QUIC ends the reading side too)."""
    await cast(Any, stream).close_write()


class _Prepended:
    """A reader that gives `first` before what `stream` reads."""

    def __init__(self, first: bytes, stream: INetStream) -> None:
        self._first, self._stream = first, stream

    async def read(self, n: int | None = None) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            return data
        return await self._stream.read(n)


async def read_frame_or_end(stream: INetStream) -> bytes | None:
    """One frame, as `read_frame`; None when the peer ends the stream (its FIN) before
    sending a byte of one. A reset raises what a failed read raises (map it with
    `map_peer_errors`). Bound it with a deadline."""
    try:
        first = await stream.read(1)
    except (StreamEOF, MuxedStreamEOF):
        return None
    return await read_varint_prefixed_bytes_limited(cast(Any, _Prepended(first, stream)),
                                                    MAX_MESSAGE_SIZE)


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
    return "udp" if isinstance(stream.muxed_conn, QUICConnection | QuicConn) else "tcp"


def connection_remote(conn: INetConn) -> Endpoint | None:
    """The transport address of the peer on a direct connection."""
    addr = cast(Any, conn.muxed_conn).get_remote_address()
    return Endpoint.from_sockaddr(addr) if addr else None


def stream_peer(stream: INetStream) -> ID:
    """The authenticated peer id of the connection under `stream` (Noise/TLS verified)."""
    return stream.muxed_conn.peer_id


def carried_by(stream: INetStream, conn: INetConn) -> bool:
    """True if `stream` runs over `conn`."""
    return stream.muxed_conn is conn.muxed_conn


async def reset_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception as exc:  # the stream is being discarded; any failure is moot
            log.debug("reset failed: %s", exc)


HANDLER_STREAMS_PER_PEER = 64
HANDLER_STREAMS_PER_NETWORK = 128
HANDLER_STREAMS = 512
"""Streams one handler serves at once, per peer id, per source network and in total: a floor
under every protocol, however its service bounds its own work (most bound far tighter)."""

handler_refusals: Counter[str] = Counter()
"""Streams `guarded_handler` reset for want of a slot, per handler name (since start)."""


def guarded_handler(
    name: str, handler: Callable[[INetStream], Awaitable[None]], *, bounded: bool = True
) -> Callable[[INetStream], Awaitable[None]]:
    """Wrap a stream handler so nothing escapes into py-libp2p (which would kill the swarm).

    Unless `bounded` is False (a service that bounds its own streams more loosely, such as
    tunnels), a stream past the handler's share per peer, per source network or in total
    (`HANDLER_STREAMS*`) is reset before the handler sees it.
    """
    slots = SlotLimit(total=HANDLER_STREAMS, per_peer=HANDLER_STREAMS_PER_PEER,
                      per_network=HANDLER_STREAMS_PER_NETWORK) if bounded else None

    async def run(stream: INetStream) -> None:
        claim = None
        if slots is not None:
            remote = remote_endpoint(stream)
            network = RELAYED if remote is None else network_of(remote.ip)
            claim = slots.acquire(str(stream_peer(stream)), network)
            if claim is None:
                log.debug("%s: stream refused, the %s share is held", name, slots.last_refusal)
                handler_refusals[name] += 1
                await reset_quietly(stream)
                return
        try:
            await handler(stream)
        except Exception:  # reaching this is a meshnat bug: log it, keep the node alive
            log.error("%s: handler bug", name, exc_info=True)
            await reset_quietly(stream)
        finally:
            if claim is not None and slots is not None:
                slots.release(claim)

    return run


@contextmanager
def handling(host: IHost, protocol: TProtocol, name: str,
             handler: Callable[[INetStream], Awaitable[None]], *,
             bounded: bool = True) -> Iterator[None]:
    """Serve `protocol` with `handler` (through `guarded_handler`) while inside; the handler
    is removed on the way out, however the block ends."""
    host.set_stream_handler(protocol, guarded_handler(name, handler, bounded=bounded))
    try:
        yield
    finally:
        host.remove_stream_handler(protocol)
