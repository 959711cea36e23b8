"""One Yamux stream of `yamux.Yamux`: a receive buffer, both windows, half-close and reset.

Reads return what is buffered (up to `n`) without copying whole frames; a write waits for
send window on an event, not a poll, and goes out as frames of up to `FRAME_PAYLOAD` bytes,
each one Noise message. End of stream is only a FIN: a stream whose connection dies, or
that is reset, raises `MuxedStreamReset` on read once its buffered bytes are read, so a
truncated transfer is never mistaken for a complete one.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IMuxedStream
from libp2p.stream_muxer.exceptions import (
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamError,
    MuxedStreamReset,
)

from meshnat._libp2p.yamux_frames import (
    DATA,
    FIN,
    FRAME_PAYLOAD,
    INITIAL_WINDOW,
    RST,
    WINDOW_UPDATE,
    ReceiveWindow,
    encode,
)

if TYPE_CHECKING:
    from meshnat._libp2p.yamux import Yamux

_NO_CHUNKS: deque[bytes] = deque()
"""The empty buffer of every stream that has received nothing yet (never appended to)."""


class YamuxStream(IMuxedStream):
    """A stream with a deque of received chunks; all frame handling is by its `Yamux`."""

    def __init__(self, conn: Yamux, stream_id: int, now: float) -> None:
        self.muxed_conn = conn
        self._conn = conn
        self.stream_id = stream_id
        self.send_window = INITIAL_WINDOW
        self.window = ReceiveWindow(now, conn.window_budget)
        self.recv_closed = False
        """A FIN arrived: once the buffer is read, reads raise MuxedStreamEOF."""
        self.send_closed = False
        self.is_reset = False
        self._chunks: deque[bytes] = _NO_CHUNKS  # its own deque from the first DATA on
        self._buffered = 0
        # events and the write lock are made when first needed: a connection keeps streams
        # that carry nothing (py-libp2p's accept loop holds the last one it accepted)
        self._readable: trio.Event | None = None
        self._writable: trio.Event | None = None
        self._write_lock: trio.Lock | None = None

    # --- called by the connection's reader (synchronous: it never waits) --------------------

    def deliver(self, payload: bytes) -> None:
        self.window.receive(len(payload))
        if payload:
            if self._chunks is _NO_CHUNKS:
                self._chunks = deque()
            self._chunks.append(payload)
            self._buffered += len(payload)
            if self._readable is not None:
                self._readable.set()

    def grant(self, increment: int) -> None:
        self.send_window += increment
        if self._writable is not None:
            self._writable.set()

    def finish(self) -> None:
        """The peer half-closed."""
        self.recv_closed = True
        if self._readable is not None:
            self._readable.set()

    def kill(self) -> None:
        """Reset (by the peer, by us, or because the connection is gone)."""
        self.is_reset = True
        for event in (self._readable, self._writable):
            if event is not None:
                event.set()

    @property
    def closed(self) -> bool:
        return self.is_reset or (self.recv_closed and self.send_closed)

    @property
    def _writing(self) -> trio.Lock:
        if self._write_lock is None:
            self._write_lock = trio.Lock()
        return self._write_lock

    # --- IMuxedStream --------------------------------------------------------------------

    async def read(self, n: int | None = -1) -> bytes:
        """Up to `n` buffered bytes (all of them for None or -1), waiting for some."""
        while not self._chunks:
            if self.is_reset:
                raise MuxedStreamReset("yamux: stream reset")
            if self.recv_closed:
                raise MuxedStreamEOF("yamux: end of stream")
            self._readable = trio.Event()
            await self._readable.wait()
        if n is None or n < 0 or n >= self._buffered:
            data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
        else:
            data = self._take(n)
        self._buffered -= len(data)
        if not self.recv_closed and not self.is_reset:
            increment = self.window.update(self._buffered, trio.current_time(), self._conn.rtt)
            if increment:
                self._conn.send_control(encode(WINDOW_UPDATE, 0, self.stream_id, increment),
                                        first=True)
        return data

    def _take(self, n: int) -> bytes:
        first = self._chunks[0]
        if len(first) > n:
            self._chunks[0] = first[n:]
            return first[:n]
        parts, size = [], 0
        while size < n:
            chunk = self._chunks.popleft()
            if size + len(chunk) > n:
                self._chunks.appendleft(chunk[n - size:])
                chunk = chunk[:n - size]
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    async def write(self, data: bytes) -> None:
        """Send all of `data`, waiting for window as long as it takes (callers bound it)."""
        view = memoryview(data)
        async with self._writing:
            while view:
                self._check_writable()
                while self.send_window <= 0:
                    self._writable = trio.Event()
                    await self._writable.wait()
                    self._check_writable()
                size = min(len(view), self.send_window, FRAME_PAYLOAD)
                self.send_window -= size
                await self._conn.send_frame(encode(DATA, 0, self.stream_id, size), view[:size])
                view = view[size:]

    def _check_writable(self) -> None:
        if self.is_reset:
            raise MuxedStreamReset("yamux: stream reset")
        if self.send_closed:
            raise MuxedStreamClosed("yamux: stream closed for writing")

    async def close(self) -> None:
        """Half-close: FIN to the peer; reading goes on until its FIN."""
        if self.send_closed or self.is_reset:
            return
        async with self._writing:
            if self.send_closed or self.is_reset:
                return
            self.send_closed = True
            try:
                await self._conn.send_frame(encode(WINDOW_UPDATE, FIN, self.stream_id, 0))
            except MuxedStreamError:
                self.kill()  # the connection is gone: the stream ended with it, not cleanly
        self._conn.forget_if_done(self)

    async def close_write(self) -> None:
        await self.close()

    async def reset(self) -> None:
        """RST to the peer (queued: never waits on the socket); both directions end."""
        if self.closed:
            return
        self.kill()
        self._conn.send_control(encode(WINDOW_UPDATE, RST, self.stream_id, 0))
        self._conn.forget_if_done(self)

    def set_deadline(self, ttl: int) -> None:
        raise NotImplementedError("yamux streams have no deadlines; bound the calls instead")

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.get_remote_address()

    async def __aenter__(self) -> YamuxStream:
        return self
