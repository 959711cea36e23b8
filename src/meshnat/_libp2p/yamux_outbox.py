"""The one writer of a Yamux connection: frames queue here and one task sends them in order.

Nobody but `Outbox.run` writes to the secure channel, so a caller cancelled while it waits
(a timeout around `stream.write`) never leaves half a Noise message on the wire, and the
connection's reader never waits on a write (the deadlock py-libp2p's Yamux had). Small frames
in a row (window updates, ACKs, pings) are coalesced into one Noise message. Writers of DATA
wait while more than `limit` bytes are queued; replies and window updates never wait, and
window updates jump the queue (behind 256 KiB of our DATA, a window update
would leave the peer's writer idle for as long as that takes to send).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

import trio

from meshnat._libp2p.yamux_frames import HEADER_SIZE, NOISE_PLAINTEXT

log = logging.getLogger(__name__)


class Channel(Protocol):
    async def write(self, data: bytes) -> None: ...


class OutboxClosed(Exception):
    """The connection is closing or its channel broke: nothing more is sent."""


class Outbox:
    """A FIFO of frames and the task that writes them."""

    def __init__(self, channel: Channel, limit: int) -> None:
        self._channel, self._limit = channel, limit
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self.small_frames = 0
        """Header-only frames queued (replies, window updates): the peer's share to bound."""
        self._ready = trio.Event()
        self._room = trio.Event()
        self._empty = trio.Event()
        self._empty.set()
        self.closed = False

    def put(self, frame: bytes, *, first: bool = False) -> None:
        """Queue `frame` whatever the queue holds (small control frames); `first` puts it
        ahead of everything queued (a window update: its order among other frames does not
        matter, and the peer's writer may be waiting on it)."""
        if self.closed:
            raise OutboxClosed
        if first:
            self._frames.appendleft(frame)
        else:
            self._frames.append(frame)
        self._bytes += len(frame)
        if len(frame) == HEADER_SIZE:
            self.small_frames += 1
        if self._empty.is_set():
            self._empty = trio.Event()
        self._ready.set()

    async def put_waiting(self, frame: bytes) -> None:
        """Queue `frame` once fewer than `limit` bytes are queued."""
        while self._bytes >= self._limit and not self.closed:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()
        self.put(frame)

    async def flush(self) -> None:
        """Wait until everything queued was sent (or the outbox closed)."""
        await self._empty.wait()

    def close(self) -> None:
        """Refuse further frames and wake every waiter."""
        self.closed = True
        self._room.set()
        self._empty.set()
        self._ready.set()

    async def run(self) -> None:
        """Send queued frames until closed; a failing channel closes the outbox."""
        frames = self._frames
        try:
            while True:
                while not frames or self.closed:
                    self._empty.set()
                    if self.closed:
                        return
                    if self._ready.is_set():
                        self._ready = trio.Event()
                    await self._ready.wait()
                data = self._next_message()
                await self._channel.write(data)
                self._bytes -= len(data)
                if self._bytes < self._limit:
                    self._room.set()
        except Exception as exc:  # the channel is gone (or broke); the reader sees it too
            log.debug("yamux: write failed: %s", type(exc).__name__)
            self.close()

    def _next_message(self) -> bytes:
        frames = self._frames
        first = frames.popleft()
        if len(first) == HEADER_SIZE:
            self.small_frames -= 1
        if not frames or len(first) + len(frames[0]) > NOISE_PLAINTEXT:
            return first
        parts, size = [first], len(first)
        while frames and size + len(frames[0]) <= NOISE_PLAINTEXT:
            frame = frames.popleft()
            if len(frame) == HEADER_SIZE:
                self.small_frames -= 1
            parts.append(frame)
            size += len(frame)
        return b"".join(parts)
