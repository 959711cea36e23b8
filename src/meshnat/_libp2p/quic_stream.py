"""py-libp2p's QUIC stream, made to deliver every byte or fail: no silent loss at the end.

Two ways py-libp2p 0.8.1's `QUICStream` loses received data without an error:
- **End of stream read too early.** `read()` looks at the receive buffer under one lock and at
  "read side closed" under a second one. Taking the second lock is a checkpoint: when the
  last data and the FIN arrive right then, `read()` reports end of stream with those bytes
  still in the buffer, and they are never read (the lost tails of issue 19).
- **Overflow dropped.** Data arriving while the buffer already holds
  `MAX_STREAM_RECEIVE_BUFFER` bytes is dropped with a warning and the stream goes on.

`install()` replaces both methods: `read()` checks buffer, reset and FIN in one step with no
checkpoint between them (data is always appended before the FIN is noted, so an empty buffer
seen after the FIN is the true end), and an overflow resets the stream, so the reader gets
an error instead of a stream with a hole in it.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import trio
from libp2p.transport.quic import stream as quic_stream
from libp2p.transport.quic.exceptions import (
    QUICStreamClosedError,
    QUICStreamResetError,
    QUICStreamTimeoutError,
)

log = logging.getLogger(__name__)

_OVERFLOW = 1
"""Application error code of the reset sent when the receive buffer would overflow."""


async def read(self: Any, n: int | None = None) -> bytes:
    """Up to `n` bytes (all buffered if None/-1) once any are buffered; raises at the end."""
    limit = -1 if n is None else n
    with trio.move_on_after(self.READ_TIMEOUT):
        while True:
            # No await from here to the wait: buffer, reset and FIN are one observation.
            if self._receive_buffer:
                self._timeline.record_first_data()
                return cast(bytes, self._extract_data_from_buffer(limit))
            if self.is_reset():
                raise QUICStreamResetError(f"Stream {self.stream_id} was reset")
            if self._read_closed:
                raise quic_stream._QUICStreamEOF()
            if self.is_closed():
                raise QUICStreamClosedError(f"Stream {self.stream_id} is closed")
            await self._receive_event.wait()
            self._receive_event = trio.Event()
    raise QUICStreamTimeoutError(f"Read timeout on stream {self.stream_id}")


async def handle_data_received(self: Any, data: bytes, end_stream: bool) -> None:
    """Buffer `data` (then note the FIN); reset the stream rather than drop data."""
    if self.is_reset():
        return
    if len(self._receive_buffer) + len(data) > self.MAX_RECEIVE_BUFFER_SIZE:
        log.debug("quic: stream %s receive buffer full; resetting it", self.stream_id)
        await self.reset(error_code=_OVERFLOW)
        self._receive_event.set()
        return
    if data:
        self._receive_buffer.extend(data)
        self._timeline.record_first_data()
    if end_stream:
        self._read_closed = True
        async with self._state_lock:
            closed = self._write_closed
            if not self.is_reset():
                self._state = (quic_stream.StreamState.CLOSED if closed
                               else quic_stream.StreamState.READ_CLOSED)
    self._receive_event.set()


def install() -> None:
    """Use the reads above for every QUIC stream py-libp2p creates."""
    cls = cast(Any, quic_stream.QUICStream)
    cls.read, cls.handle_data_received = read, handle_data_received
