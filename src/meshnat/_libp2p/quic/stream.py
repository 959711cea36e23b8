"""One QUIC stream as py-libp2p's IMuxedStream: every byte or an error, FIN and reset, backpressure.

Reads see buffer, reset and FIN in one observation (no checkpoint between them), so the end
of stream is reported only once every received byte was read. Writes wait while more than
`SEND_BACKLOG` bytes of the stream are still queued in qh3 (not yet sent); received data the
application has not read is bounded by `RECEIVE_LIMIT`: past it the connection takes no more
data out of qh3's core until the reader catches up. qh3's core grants flow-control credit as
its events are taken, so the peer then stops at its window, while acknowledgments (and so
this side's own writes) keep flowing. Until the reader catches up, the connection's other
streams receive nothing either (their data waits in the core behind the full one).
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IMuxedStream
from libp2p.stream_muxer.exceptions import (
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamError,
    MuxedStreamReset,
)

if TYPE_CHECKING:
    from meshnat._libp2p.quic.connection import QuicConn

SEND_BACKLOG = 1 << 20
"""Bytes of a stream queued in qh3 (not yet sent) past which `write` waits."""
RECEIVE_LIMIT = 8 << 20
"""Unread bytes of a stream past which its connection takes no more data from qh3's core."""
_RESET = 0
"""Application error code of the resets and stop-sendings this module sends."""


class QuicStream(IMuxedStream):
    """A bidirectional QUIC stream (`read`, `write`, `close_write`, `close`, `reset`)."""

    def __init__(self, conn: QuicConn, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._buffer = bytearray()
        self._fin = False
        self._reset_by_peer = False
        self._stopped_by_peer = False
        self._reset_here = False
        self._write_closed = False
        self._read_closed = False
        self._readable = trio.Event()
        self.read_timeout: float | None = conn.read_timeout

    @property
    def muxed_conn(self) -> QuicConn:  # type: ignore[override]
        return self._conn

    # --- application side ---------------------------------------------------------------

    async def read(self, n: int | None = None) -> bytes:
        """Up to `n` bytes (all buffered if None or -1) once any are buffered.

        Raises MuxedStreamEOF at the end of the stream, MuxedStreamReset when either side
        reset it, MuxedStreamError when `read_timeout` passes without data.
        """
        timeout = self.read_timeout if self.read_timeout is not None else float("inf")
        with trio.move_on_after(timeout):
            while True:
                if self._buffer:
                    return self._take(n)
                if self._reset_by_peer or self._reset_here:
                    raise MuxedStreamReset(f"stream {self.stream_id} was reset")
                if self._fin or self._read_closed:
                    raise MuxedStreamEOF(f"stream {self.stream_id} ended")
                if self._conn.is_closed:
                    raise MuxedStreamReset(f"connection of stream {self.stream_id} closed: "
                                           f"{self._conn.failure}")
                await self._readable.wait()
                self._readable = trio.Event()
        raise MuxedStreamError(f"stream {self.stream_id}: no data within the read timeout")

    def _take(self, n: int | None) -> bytes:
        if n is None or n < 0 or n >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
        self._conn.stream_drained(self)
        return data

    async def write(self, data: bytes) -> None:
        """Queue `data`; waits while the stream's unsent backlog exceeds `SEND_BACKLOG`."""
        self._check_writable()
        if data:
            self._conn.send(self.stream_id, data, end_stream=False)
            self._check_writable()  # the connection failed while sending: the data is lost
        while self._conn.send_backlog(self.stream_id) > SEND_BACKLOG:
            await self._conn.wait_send_progress()
            self._check_writable()

    def _check_writable(self) -> None:
        if self._reset_here or self._reset_by_peer or self._stopped_by_peer:
            raise MuxedStreamReset(f"stream {self.stream_id} was reset")
        if self._write_closed:
            raise MuxedStreamClosed(f"stream {self.stream_id} is closed for writing")
        if self._conn.is_closed:
            raise MuxedStreamReset(f"connection of stream {self.stream_id} closed: "
                                   f"{self._conn.failure}")

    async def close_write(self) -> None:
        """Half-close: send FIN once everything written before it."""
        if self._write_closed or self._reset_here or self._conn.is_closed:
            return
        self._write_closed = True
        if not (self._reset_by_peer or self._stopped_by_peer):
            self._conn.send(self.stream_id, b"", end_stream=True)
        await trio.lowlevel.checkpoint()

    async def close_read(self) -> None:
        """Stop reading: the peer is asked to stop sending, unread data is dropped."""
        if not (self._read_closed or self._fin or self._reset_by_peer or self._reset_here):
            self._conn.stop_sending(self.stream_id, _RESET)
        self._read_closed = True
        self._buffer.clear()
        self._conn.stream_drained(self)
        self._readable.set()
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Close both directions (py-libp2p's QUIC semantics; `close_write` half-closes)."""
        await self.close_write()
        await self.close_read()
        self._conn.forget_if_done(self)

    async def reset(self) -> None:
        """Abort both directions at once."""
        if not self._reset_here and not self._conn.is_closed:
            # no STOP_SENDING once the peer's FIN or reset is in: qh3 2.1 can keep such a
            # frame reserved past the end of the stream and then fail the connection
            self._conn.reset(self.stream_id, _RESET, stop=not (
                self._fin or self._reset_by_peer or self._read_closed))
        self._reset_here = True
        self._buffer.clear()
        self._conn.stream_drained(self)
        self._readable.set()
        self._conn.wake_writers()
        self._conn.forget_if_done(self)
        await trio.lowlevel.checkpoint()

    def set_deadline(self, ttl: int) -> None:
        """Reads wait at most `ttl` seconds for data."""
        self.read_timeout = float(ttl)

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.remote_address

    async def __aenter__(self) -> QuicStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_val: BaseException | None, exc_tb: TracebackType | None) -> None:
        await self.close()

    # --- connection side ----------------------------------------------------------------

    @property
    def unread(self) -> int:
        return len(self._buffer)

    @property
    def done(self) -> bool:
        """Nothing more will happen on this stream in either direction."""
        ended = self._fin or self._read_closed or self._reset_by_peer or self._reset_here
        sent = self._write_closed or self._stopped_by_peer or self._reset_here
        return ended and sent and not self._buffer

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if not (self._read_closed or self._reset_here or self._reset_by_peer):
            self._buffer += data
        self._fin = self._fin or end_stream
        self._readable.set()

    def on_reset(self) -> None:
        self._reset_by_peer = True
        self._buffer.clear()
        self._readable.set()

    def on_stop_sending(self) -> None:
        self._stopped_by_peer = True

    def on_connection_closed(self) -> None:
        self._readable.set()
