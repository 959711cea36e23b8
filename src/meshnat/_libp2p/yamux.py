"""py-libp2p's Yamux with a frame reader that never waits for the socket to take a write.

py-libp2p 0.8.1's reader task answers some frames inline: the ACK (or RST) for a stream the
peer opens and the reply to a ping are written from inside the read loop. While that write
waits for the connection's write lock or for room in the TCP send buffer, nothing is read.
When both nodes fill their send buffers at once (many streams carrying data both ways, e.g. a
hundred tunnels through one connection on a loaded machine) and each reader then has a reply
to write, neither reads again: both connections stall for good, and every stream on them
with it.

Here the reader hands those replies to a queue and a writer task of the connection sends them,
so reading goes on while the socket is full. A peer that makes us owe more than
`MAX_PENDING_REPLIES` replies while it does not read them is not following the protocol; its
connection is closed. Nothing changes on the wire: the same frames are sent, in the same
order among themselves.

py-libp2p builds its Yamux class by name once `/yamux/1.0.0` is negotiated, whatever muxer
class it was given, so `install()` points that name at this class.

Frames: py-libp2p's largest Yamux frame (64 KiB of payload) does not fit one Noise message
(65,519 bytes of plaintext), so every full frame went out as two Noise messages, and a 64 KiB
write as a 65,524-byte frame plus a 12-byte one: three encryptions, sends and decryptions, and
a window update for the small frame. `install()` caps a frame at one Noise message
(`FRAME_PAYLOAD` bytes of payload); smaller frames are always valid Yamux.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import trio
from libp2p.io.exceptions import IOException
from libp2p.network.connection.exceptions import RawConnError
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer import muxer_multistream
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, Yamux

log = logging.getLogger(__name__)

FRAME_PAYLOAD = MAX_PLAINTEXT_LENGTH - HEADER_SIZE
"""Payload of the largest Yamux frame that fits one Noise message (65,507 bytes): what a
tunnel reads at once and a relay hop copies at once."""

MAX_PENDING_REPLIES = 4096
"""Replies (12-byte frames) a peer may have us owe before its connection is closed."""

_CONNECTION_GONE = (IOException, trio.BrokenResourceError, trio.ClosedResourceError, OSError)

_REPLIES_PER_WRITE = 64
"""Queued replies coalesced into one secure-channel message."""


class PeerNotReading(RawConnError):
    """The peer left `MAX_PENDING_REPLIES` replies unread: the connection is closed."""


class NonBlockingReaderYamux(Yamux):
    """Yamux (`/yamux/1.0.0`, wire-compatible) whose reader queues its replies."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._reader: trio.lowlevel.Task | None = None
        send, receive = trio.open_memory_channel[bytes](MAX_PENDING_REPLIES)
        self._replies_out, self._replies_in = send, receive

    async def handle_incoming(self) -> None:
        self._reader = trio.lowlevel.current_task()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_replies)
            try:
                await super().handle_incoming()
            finally:
                nursery.cancel_scope.cancel()

    async def _write_frame(self, data: bytes) -> None:
        if trio.lowlevel.current_task() is not self._reader:
            await super()._write_frame(data)
            return
        try:
            self._replies_out.send_nowait(data)
        except trio.WouldBlock:
            log.debug("yamux: %s leaves %d replies unread; closing", self.peer_id,
                      MAX_PENDING_REPLIES)
            self.event_shutting_down.set()
            raise PeerNotReading("the peer does not read its replies") from None

    async def _send_replies(self) -> None:
        async for first in self._replies_in:
            batch = [first]
            while len(batch) < _REPLIES_PER_WRITE:
                try:
                    batch.append(self._replies_in.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await super()._write_frame(b"".join(batch))
            except _CONNECTION_GONE:
                return  # the reader sees the connection end and shuts it down


def install() -> None:
    """Make every Yamux connection py-libp2p negotiates a `NonBlockingReaderYamux` whose
    frames each fit one Noise message."""
    cast(Any, muxer_multistream).Yamux = NonBlockingReaderYamux
    cast(Any, yamux_module).MAX_MESSAGE_SIZE = HEADER_SIZE + FRAME_PAYLOAD
