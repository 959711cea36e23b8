"""`ChatService`: lines of text between members of a network, one stream per line.

A line opens a new stream on the best connection to the peer at that moment (a direct one if
any), so a path upgraded from relayed to punched is used from the next line on, and a line never
rides a connection that is about to be closed. Who may talk is decided by the caller (`accept`):
the chat command accepts only peers whose verified record it found under its network name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetStream, TaskStatus, TProtocol
from meshnat.chat.messages import Bye, Say, check_text
from meshnat.config import require_in_range, require_positive
from meshnat.errors import (
    ConfigError,
    MalformedMessage,
    NotMounted,
    PeerTimeout,
    PeerUnavailable,
    RemoteProtocolError,
)
from meshnat.node import MeshNode
from meshnat.paths import PathKind
from meshnat.ratelimit import RateLimiter
from meshnat.wire import decode, encode, new_txid

log = logging.getLogger(__name__)

CHAT_PROTOCOL = TProtocol("/meshnat/chat/1.0.0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatConfig:
    """Limits of ChatService."""

    stream_timeout: float = 10.0
    """Seconds to send or receive one line."""

    rate: float = 10.0
    """Lines per second one peer may send (bursts of `burst`); more are dropped."""

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
        """Send one line to `peer` over `node.best_connection(peer)`; returns its path.

        Raises ConfigError (not a valid line), PeerUnavailable or PeerTimeout.
        """
        try:
            message = Say(new_txid(), check_text(text))
        except MalformedMessage as exc:
            raise ConfigError(str(exc)) from None
        return await self._send(peer, message)

    async def bye(self, peer: ID) -> None:
        """Tell `peer` this node leaves."""
        await self._send(peer, Bye(new_txid()))

    async def _send(self, peer: ID, message: Say | Bye) -> PathKind:
        if self._node is None:
            raise NotMounted("mount ChatService on a running MeshNode first")
        node, timeout = self._node, self.config.stream_timeout
        best = node.best_connection(peer)
        with _libp2p.map_peer_errors("chat", timeout), trio.fail_after(timeout):
            stream = await _libp2p.open_stream_on(node.host, best.conn, CHAT_PROTOCOL, timeout)
            sent = False
            try:
                await _libp2p.write_frame(stream, encode(message))
                await stream.close()
                sent = True
            finally:
                if not sent:
                    with trio.CancelScope(shield=True):
                        await _libp2p.reset_quietly(stream)
        return best.kind

    async def _handle(self, node: MeshNode, stream: INetStream) -> None:
        peer = _libp2p.stream_peer(stream)
        if not self._accept(peer) or not self._limiter.allow(str(peer), trio.current_time()):
            log.debug("chat: refused a stream from %s", peer)
            await _libp2p.reset_quietly(stream)
            return
        timeout = self.config.stream_timeout
        try:
            with _libp2p.map_peer_errors("chat", timeout), trio.fail_after(timeout):
                message = decode(await _libp2p.read_frame(stream), Say, Bye)
                await stream.close()
        except (RemoteProtocolError, PeerTimeout, PeerUnavailable) as exc:
            log.debug("chat: dropped a stream from %s: %s", peer, exc)
            await _libp2p.reset_quietly(stream)
            return
        self._on_heard(Heard(peer, message.text if isinstance(message, Say) else None,
                             node.path_of(stream), _libp2p.transport_of(stream)))
