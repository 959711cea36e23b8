"""Yamux (`/yamux/1.0.0`) of meshnat's own, in place of py-libp2p 0.8.1's, wire-compatible.

Why not py-libp2p's: its reader wrote replies (ACKs, RSTs, pings) inline, so two nodes whose
send buffers filled at once each waited on a write and neither read again (a deadlock seen in
CI); a full frame (64 KiB of payload) did not fit one Noise message, so it went out as two; a
writer out of window polled every 10 ms and gave up after 5 s; every frame took several trio
locks and a dozen debug-log calls; the stream window stayed at 256 KiB; and a connection that
died ended its streams with a clean EOF, so a cut transfer looked complete. Profiled, ~40% of a
direct transfer's CPU went to its per-frame Python (docs/performance.md).

Here:
- the reader handles every frame synchronously (`_dispatch`, no await): data goes to the
  stream's buffer, window updates wake writers; every frame, ours or a reply, goes out through
  one writer task (`yamux_outbox`), so neither the reader nor a cancelled writer can leave the
  wire half-written or stuck. A peer that leaves `MAX_PENDING_REPLIES` replies unsent is
  disconnected;
- a DATA frame's header and payload are one secure-channel write, at most `FRAME_PAYLOAD`
  bytes, so one Noise message; the Noise session is read in large pieces (`noise_channel`);
- windows start at 256 KiB (spec) and auto-tune like go-yamux up to 16 MiB (`yamux_frames`),
  with the RTT from one ping each side sends at start;
- a stream ends cleanly only with a FIN; when the connection goes, unfinished streams reset.
- limits: `MAX_STREAMS` open streams per connection, `ACCEPT_BACKLOG` not yet accepted (more
  are refused with RST); DATA beyond a window, a bad header or a stream id of the wrong parity
  closes the connection.

py-libp2p builds its Yamux by name once `/yamux/1.0.0` is negotiated, whatever muxer class it
was given, so `install()` points that name here.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, cast

import multiaddr
import trio
from libp2p.abc import IMuxedConn, IMuxedStream, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.io.exceptions import IOException
from libp2p.peer.id import ID
from libp2p.stream_muxer import muxer_multistream
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamError

from meshnat._libp2p.noise_channel import secure_channel
from meshnat._libp2p.yamux_frames import (
    ACK,
    DATA,
    FIN,
    FRAME_PAYLOAD,
    GO_AWAY,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    Frame,
    FrameParser,
    WindowBudget,
    YamuxProtocolError,
    encode,
)
from meshnat._libp2p.yamux_outbox import Outbox, OutboxClosed
from meshnat._libp2p.yamux_stream import YamuxStream
from meshnat.errors import RemoteProtocolError

__all__ = ["FRAME_PAYLOAD", "MAX_PENDING_REPLIES", "Yamux", "YamuxStream", "install"]

log = logging.getLogger(__name__)

MAX_PENDING_REPLIES = 4096
"""Replies (12-byte frames) a peer may have us owe before its connection is closed."""

MAX_STREAMS = 256
"""Open streams per connection, both directions together (py-libp2p's backlog was 256 too).
What a peer can make a connection buffer unread is the sum of its streams' windows: 256 KiB
each (64 MiB in all), plus what auto-tuning grew them by, at most `CONNECTION_GROWTH` (32 MiB)
for the connection."""

ACCEPT_BACKLOG = 256
"""Streams the peer opened that nothing has accepted yet (go-yamux's AcceptBacklog)."""

OUTBOX_BYTES = 256 * 1024
"""Bytes of DATA queued for the writer task before stream writers wait."""

_CLOSE_TIMEOUT = 1.0
"""Seconds a close waits to send GO_AWAY and close the secure channel."""

_CLOSE_BOUND = 4 * _CLOSE_TIMEOUT
"""Seconds a shielded close (GO_AWAY, the channel, py-libp2p's on_close hook) may take."""

_CONNECTION_GONE = (IOException, trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                    EOFError)


class Yamux(IMuxedConn):
    """A Yamux session over one secure connection (py-libp2p's IMuxedConn)."""

    def __init__(self, secured_conn: ISecureConn, peer_id: ID, is_initiator: bool | None = None,
                 on_close: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.secured_conn = secured_conn
        self._channel = secure_channel(secured_conn)
        self.peer_id = peer_id
        self.on_close = on_close
        self._initiator = secured_conn.is_initiator if is_initiator is None else is_initiator
        self._next_id = 1 if self._initiator else 2
        self._streams: dict[int, YamuxStream] = {}
        self._backlog: deque[YamuxStream] = deque()
        """Streams the peer opened, not accepted yet (a deque, not a memory channel: ~1.8 KiB
        less per idle connection)."""
        self._backlog_ready: trio.Event | None = None
        self._backlog_closed = False
        self._outbox = Outbox(self._channel, OUTBOX_BYTES)
        self.window_budget = WindowBudget()
        """What this connection's stream windows may still grow by together."""
        self._ping_sent: float | None = None
        self.rtt = 0.0
        """Seconds, from one ping at start (0 until its answer came)."""
        self.event_started = trio.Event()
        self.event_closed = trio.Event()
        self._closing = False
        self._peer_going_away = False
        self._close_code = GO_AWAY_NORMAL

    # --- IMuxedConn ------------------------------------------------------------------------

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def is_established(self) -> bool:
        return self.event_started.is_set() and not (self._closing or self._peer_going_away)

    @property
    def is_closed(self) -> bool:
        return self.event_closed.is_set()

    async def start(self) -> None:
        """Run the session: read frames until the connection ends, then close."""
        if self.event_started.is_set():
            return
        try:
            async with trio.open_nursery() as nursery:
                self._outbox.start(nursery)
                self._ping()
                self.event_started.set()
                await self._read_frames()
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_BOUND):
                    await self.close()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_BOUND):
                await self.close()

    async def close(self, error_code: int = GO_AWAY_NORMAL) -> None:
        """GO_AWAY (best effort), close the secure channel, reset what is unfinished."""
        if self._closing:
            # the first close sets it within 2 x _CLOSE_TIMEOUT, even if it was cancelled
            with trio.move_on_after(3 * _CLOSE_TIMEOUT):
                await self.event_closed.wait()
            return
        self._closing = True
        self._close_backlog()
        for stream in list(self._streams.values()):
            stream.kill()
        self._streams.clear()
        try:
            with trio.move_on_after(_CLOSE_TIMEOUT):
                with suppress(OutboxClosed):
                    self._outbox.put(encode(GO_AWAY, 0, 0, max(error_code, self._close_code)))
                await self._outbox.flush()
        finally:
            # also when this close is cancelled: a later close() (start's, shielded) only
            # waits for event_closed, so it must be set whatever happens here
            self._outbox.close()
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                try:
                    await self.secured_conn.close()
                except Exception as exc:  # closing a broken channel: nothing left to do
                    log.debug("yamux: closing %s: %s", self.peer_id, type(exc).__name__)
            self.event_closed.set()
        if self.on_close is not None:
            await self.on_close()

    async def open_stream(self) -> IMuxedStream:
        if self._closing or self._peer_going_away:
            raise MuxedStreamError("yamux: connection closed")
        if len(self._streams) >= MAX_STREAMS:
            raise MuxedStreamError("yamux: too many open streams")
        stream_id, self._next_id = self._next_id, self._next_id + 2
        stream = YamuxStream(self, stream_id, trio.current_time())
        self._streams[stream_id] = stream
        try:
            await self.send_frame(encode(WINDOW_UPDATE, SYN, stream_id, 0))
        except BaseException:
            stream.kill()
            self.forget_if_done(stream)
            raise
        return stream

    async def accept_stream(self) -> IMuxedStream:
        while not self._backlog:
            if self._backlog_closed:
                raise MuxedConnUnavailable("yamux: connection closed")
            self._backlog_ready = trio.Event()
            await self._backlog_ready.wait()
        return self._backlog.popleft()

    def _close_backlog(self) -> None:
        """No more streams from the peer: accept_stream raises once the backlog is empty."""
        self._backlog_closed = True
        if self._backlog_ready is not None:
            self._backlog_ready.set()

    def get_transport_addresses(self) -> list[multiaddr.Multiaddr]:
        return self.secured_conn.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self.secured_conn.get_connection_type()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.secured_conn.get_remote_address()

    # --- writing -------------------------------------------------------------------------

    async def send_frame(self, header: bytes, payload: bytes | memoryview = b"") -> None:
        """Queue one frame (header and payload: one Noise message); waits while the outbox
        is full; raises MuxedStreamError once the connection is closing."""
        try:
            await self._outbox.put_waiting(header + payload if payload else header)
        except OutboxClosed:
            raise MuxedStreamError("yamux: connection closed") from None

    def send_control(self, frame: bytes, *, first: bool = False) -> None:
        """Queue a small frame (a window update, an RST); never waits. `first`: ahead of
        queued frames (only for frames whose order does not matter: window updates)."""
        with suppress(OutboxClosed):
            self._outbox.put(frame, first=first)

    def _reply(self, frame: bytes) -> None:
        """Queue a frame the peer's frame calls for; too many unsent: the peer is not reading."""
        if self._outbox.small_frames >= MAX_PENDING_REPLIES:
            raise YamuxProtocolError("yamux: the peer does not read its replies")
        self.send_control(frame)

    def _ping(self) -> None:
        self._ping_sent = trio.current_time()
        self.send_control(encode(PING, SYN, 0, 1))

    # --- reading -------------------------------------------------------------------------

    async def _read_frames(self) -> None:
        parser = FrameParser()
        read = self._channel.read
        try:
            while True:
                data = await read()
                if not data:
                    return
                for frame in parser.feed(data):
                    self._dispatch(frame)
        except RemoteProtocolError as exc:
            log.debug("yamux: %s broke the protocol: %s", self.peer_id, exc)
            self._close_code = GO_AWAY_PROTOCOL_ERROR
        except (*_CONNECTION_GONE, MuxedStreamError) as exc:
            log.debug("yamux: connection to %s ended: %s", self.peer_id, type(exc).__name__)

    def _dispatch(self, frame: Frame) -> None:
        if frame.type == PING:
            if frame.flags & SYN:
                self._reply(encode(PING, ACK, 0, frame.length))
            elif frame.flags & ACK and self._ping_sent is not None:
                self.rtt, self._ping_sent = trio.current_time() - self._ping_sent, None
            return
        if frame.type == GO_AWAY:
            self._going_away_remote()
            return
        stream = self._streams.get(frame.stream_id)
        if frame.flags & SYN:
            stream = self._opened_by_peer(frame.stream_id)
            if stream is None:
                return
        if stream is None:
            return  # a stream we forgot (reset, or both sides done): late frames are dropped
        if frame.type == DATA:
            stream.deliver(frame.payload)
        elif frame.length:
            stream.grant(frame.length)
        if frame.flags & RST:
            stream.kill()
            self.forget_if_done(stream)
        elif frame.flags & FIN:
            stream.finish()
            self.forget_if_done(stream)

    def _opened_by_peer(self, stream_id: int) -> YamuxStream | None:
        if stream_id == 0 or stream_id % 2 == self._next_id % 2 or stream_id in self._streams:
            raise YamuxProtocolError("yamux: SYN with a stream id the peer may not use")
        if self._closing or self._peer_going_away or len(self._streams) >= MAX_STREAMS:
            self._reply(encode(WINDOW_UPDATE, RST, stream_id, 0))
            return None
        if self._backlog_closed or len(self._backlog) >= ACCEPT_BACKLOG:
            self._reply(encode(WINDOW_UPDATE, RST, stream_id, 0))
            return None
        stream = YamuxStream(self, stream_id, trio.current_time())
        self._backlog.append(stream)
        if self._backlog_ready is not None:
            self._backlog_ready.set()
        self._streams[stream_id] = stream
        self._reply(encode(WINDOW_UPDATE, ACK, stream_id, 0))
        return stream

    def _going_away_remote(self) -> None:
        """The peer opens no more streams; ours finish, new ones are refused."""
        self._peer_going_away = True
        self._close_backlog()

    def forget_if_done(self, stream: YamuxStream) -> None:
        if stream.closed and self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            stream.window.release()

    def statistics(self) -> dict[str, int]:
        """Open streams and replies waiting to be sent."""
        return {"streams": len(self._streams), "pending_replies": self._outbox.small_frames}


def install() -> None:
    """Make every Yamux connection py-libp2p negotiates one of meshnat's `Yamux`."""
    cast(Any, muxer_multistream).Yamux = Yamux
