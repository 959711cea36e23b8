"""`ChatService`: lines of text between members of a network, one stream per line.

A line opens a new stream on the best connection to the peer at that moment (a direct one if
any), so a path upgraded from relayed to punched is used from the next line on, and a line never
rides a connection that is about to be closed. Who may talk is decided by the caller (`accept`):
the chat command accepts only peers whose verified record it found under its network name.

A line is sent only once the peer has read it: the receiver ends its side of the stream after
reading the line, and the sender waits for that end; a member over its rate gets an
`ErrorResponse` (RATE_LIMITED) instead, a stranger a reset. Written
bytes alone prove nothing: a muxer queues them, and the stream's negotiation may have been
the last thing a dying path carried (or the receiver refused the line after it). A line may
be sent again over another connection with the same txid (`send_on`); the receiver hears it
once (the txids of the last `RECENT_LINES` lines are remembered).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, Connection, INetStream, TaskStatus, TProtocol
from meshnat.chat.messages import Bye, Say, check_text
from meshnat.config import require_in_range, require_positive
from meshnat.errors import (
    ConfigError,
    MalformedMessage,
    NotMounted,
    PeerRefused,
    PeerTimeout,
    PeerUnavailable,
    RemoteProtocolError,
)
from meshnat.node import MeshNode
from meshnat.paths import PathKind
from meshnat.ratelimit import RateLimiter
from meshnat.wire import TXID_SIZE, decode, encode, new_txid
from meshnat.wire.error_response import ErrorCode, ErrorResponse

log = logging.getLogger(__name__)

CHAT_PROTOCOL = TProtocol("/meshnat/chat/1.0.0")

RECENT_LINES = 1024
"""(peer, txid) pairs of lines heard that a receiver remembers, to hear a line sent again over
another path once (bounded: the oldest is forgotten first)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatConfig:
    """Limits of ChatService."""

    stream_timeout: float = 10.0
    """Seconds to send or receive one line."""

    rate: float = 10.0
    """Lines per second one peer may send (bursts of `burst`); more are refused (the sender
    is told: RATE_LIMITED)."""

    burst: int = 50

    def __post_init__(self) -> None:
        require_positive(self, "stream_timeout", "rate")
        require_in_range(self, 1, 10_000, "burst")


@dataclass(frozen=True, slots=True)
class Heard:
    """A line (or a goodbye, `text` None) from `peer`, and the path it came over."""

    peer: ID
    text: str | None
    path: PathKind
    transport: str


class ChatService:
    """Sends and receives chat lines; `on_heard` gets what accepted peers say."""

    protocol_id = CHAT_PROTOCOL

    def __init__(self, *, accept: Callable[[ID], bool], on_heard: Callable[[Heard], None],
                 config: ChatConfig | None = None) -> None:
        self.config = config or ChatConfig()
        self._accept, self._on_heard = accept, on_heard
        self._limiter = RateLimiter(rate=self.config.rate, burst=self.config.burst)
        self._recent: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._node: MeshNode | None = None

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        self._node = node
        try:
            with _libp2p.handling(node.host, self.protocol_id, "chat",
                                  partial(self._handle, node)):
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._node = None

    async def say(self, peer: ID, text: str) -> PathKind:
        """Send one line to `peer` over `node.best_connection(peer)`; returns its path once
        the peer has read the line.

        Raises ConfigError (not a valid line), PeerRefused (the peer will not hear it:
        rate limited), PeerUnavailable (no connection, or the stream failed) or PeerTimeout.
        """
        return await self.send_on(self._mounted().best_connection(peer), self.line(text))

    @staticmethod
    def line(text: str) -> Say:
        """The message of one line (a fresh txid); ConfigError if `text` is not a valid line."""
        try:
            return Say(new_txid(), check_text(text))
        except MalformedMessage as exc:
            raise ConfigError(str(exc)) from None

    async def bye(self, peer: ID) -> None:
        """Tell `peer` this node leaves."""
        await self.send_on(self._mounted().best_connection(peer), Bye(new_txid()))

    async def send_on(self, connection: Connection, message: Say | Bye) -> PathKind:
        """Send `message` over `connection` and wait until the peer has read it (its end of
        the stream); returns the connection's path. The same `Say` sent again (another
        connection) is heard once. Raises PeerRefused (the path is fine, the peer will not
        hear the line: rate limited), PeerUnavailable or PeerTimeout (the line may or may not
        have arrived: send it again, on another path if there is one), or a
        RemoteProtocolError subclass (an answer that is no refusal).
        """
        node, timeout = self._mounted(), self.config.stream_timeout
        with _libp2p.map_peer_errors("chat", timeout), trio.fail_after(timeout):
            stream = await _libp2p.open_stream_on(node.host, connection.conn, CHAT_PROTOCOL,
                                                  timeout)
            read = False
            try:
                await _libp2p.write_frame(stream, encode(message))
                await _libp2p.close_write(stream)  # a half-close: we read the receiver's end
                # the receiver's end of the stream: it has read the line; or its refusal
                refusal = await _libp2p.read_frame_or_end(stream)
                read = True
                await stream.close()
            finally:
                if not read:
                    with trio.CancelScope(shield=True):
                        await _libp2p.reset_quietly(stream)
        if refusal is not None:
            refused = decode(refusal, ErrorResponse)
            raise PeerRefused(refused.code.name.lower(), refused.reason)
        return connection.kind

    def _mounted(self) -> MeshNode:
        if self._node is None:
            raise NotMounted("mount ChatService on a running MeshNode first")
        return self._node

    async def _handle(self, node: MeshNode, stream: INetStream) -> None:
        peer = _libp2p.stream_peer(stream)
        if not self._accept(peer):  # a stranger learns nothing
            log.debug("chat: refused a stream from %s", peer)
            await _libp2p.reset_quietly(stream)
            return
        timeout = self.config.stream_timeout
        if not self._limiter.allow(str(peer), trio.current_time()):
            log.debug("chat: %s sends too many lines; refused one", peer)
            try:  # said, so that the sender knows the path is fine and the line not heard
                with _libp2p.map_peer_errors("chat refusal", timeout), \
                        trio.fail_after(timeout):
                    await _libp2p.read_frame(stream)  # the line, unheard: then its end
                    await _libp2p.write_frame(stream, encode(ErrorResponse(
                        bytes(TXID_SIZE), ErrorCode.RATE_LIMITED, "too many lines")))
                    await _libp2p.close_write(stream)
            except (RemoteProtocolError, PeerTimeout, PeerUnavailable):
                await _libp2p.reset_quietly(stream)
                return
            await self._finish(stream)
            return
        try:
            with _libp2p.map_peer_errors("chat", timeout), trio.fail_after(timeout):
                message = decode(await _libp2p.read_frame(stream), Say, Bye)
                await _libp2p.close_write(stream)  # the sender's proof that we read the line
        except (RemoteProtocolError, PeerTimeout, PeerUnavailable) as exc:
            log.debug("chat: dropped a stream from %s: %s", peer, exc)
            await _libp2p.reset_quietly(stream)
            return
        if self._seen(str(peer), message.txid):
            log.debug("chat: %s sent a line again (another path): heard once", peer)
        else:
            self._on_heard(Heard(peer, message.text if isinstance(message, Say) else None,
                                 node.path_of(stream), _libp2p.transport_of(stream)))
        await self._finish(stream)

    async def _finish(self, stream: INetStream) -> None:
        """Wait (bounded) for the sender's end of `stream`, then let it go. A full close
        before that end would ask the sender to stop sending (QUIC's STOP_SENDING), which
        resets the stream, our end of it included."""
        timeout = self.config.stream_timeout
        try:
            with _libp2p.map_peer_errors("chat end", timeout), trio.fail_after(timeout):
                if await _libp2p.read_frame_or_end(stream) is None:
                    await stream.close()
                    return
        except (RemoteProtocolError, PeerTimeout, PeerUnavailable) as exc:
            log.debug("chat: a stream did not end cleanly: %s", exc)
        await _libp2p.reset_quietly(stream)

    def _seen(self, peer: str, txid: bytes) -> bool:
        """True if `peer`'s line `txid` was heard already; else remember it (bounded)."""
        key = (peer, txid)
        if key in self._recent:
            return True
        self._recent[key] = None
        if len(self._recent) > RECENT_LINES:
            self._recent.popitem(last=False)
        return False
