"""The one writer of a Yamux connection: frames queue here and one task sends them in order.

Nobody but `Outbox.run` writes to the secure channel, so a caller cancelled while it waits
(a timeout around `stream.write`) never leaves half a Noise message on the wire, and the
connection's reader never waits on a write (the deadlock py-libp2p's Yamux had). Small frames
in a row (window updates, ACKs, pings) are coalesced into one Noise message. Writers of DATA
wait while more than `limit` bytes are queued; replies and window updates never wait, and
window updates jump the queue (behind 256 KiB of our DATA, a window update
would leave the peer's writer idle for as long as that takes to send).

The writer task runs only while there is something to send: the first frame queued starts it
(in the nursery `start` gave), and it ends once the queue stayed empty for `LINGER` seconds, so
an idle connection holds no writer task (a relay holds one connection per reservation); a bulk
transfer keeps one writer throughout. Its events are made when someone waits, for the same
reason.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

import trio

from meshnat._libp2p.yamux_frames import HEADER_SIZE, NOISE_PLAINTEXT

log = logging.getLogger(__name__)

LINGER = 1.0
"""Seconds the writer task waits for more frames before it ends (the next frame starts a new
one): long against the gaps of a transfer, short against an idle connection's life."""


class Channel(Protocol):
    async def write(self, data: bytes) -> None: ...


class OutboxClosed(Exception):
    """The connection is closing or its channel broke: nothing more is sent."""


class Outbox:
    """A FIFO of frames and the task that writes them, started when there is work."""

    def __init__(self, channel: Channel, limit: int, *, linger: float = LINGER) -> None:
        self._channel, self._limit, self._linger = channel, limit, linger
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self.small_frames = 0
        """Header-only frames queued (replies, window updates): the peer's share to bound."""
        self._nursery: trio.Nursery | None = None
        self._writer = False
        """A writer task is running (writing, or lingering for more frames)."""
        self._writing = False
        """The writer has a message taken from the queue and not yet written."""
        self._ready: trio.Event | None = None
        """Set by `put` for a lingering writer."""
        self._room: trio.Event | None = None
        self._empty: trio.Event | None = None
        self.closed = False

    def start(self, nursery: trio.Nursery) -> None:
        """Run writer tasks in `nursery` from now on (one at a time, while there is work)."""
        self._nursery = nursery
        if self._frames:
            self._wake()

    @property
    def writer_running(self) -> bool:
        """Whether a writer task exists now (idle connections have none)."""
        return self._writer

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
        self._wake()

    def _wake(self) -> None:
        if self._writer:
            if self._ready is not None:
                self._ready.set()
            return
        if self._nursery is None:
            return  # not started yet: `start` starts the writer
        try:
            self._nursery.start_soon(self.run)
        except RuntimeError:  # the connection's nursery is closed: nothing can be sent
            self.close()
            raise OutboxClosed from None
        self._writer = True

    async def put_waiting(self, frame: bytes) -> None:
        """Queue `frame` once fewer than `limit` bytes are queued."""
        while self._bytes >= self._limit and not self.closed:
            if self._room is None or self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()
        self.put(frame)

    async def flush(self) -> None:
        """Wait until everything queued was sent (or the outbox closed)."""
        while (self._frames or self._writing) and not self.closed:
            if self._empty is None or self._empty.is_set():
                self._empty = trio.Event()
            await self._empty.wait()

    def close(self) -> None:
        """Refuse further frames and wake every waiter."""
        self.closed = True
        for event in (self._room, self._empty, self._ready):
            if event is not None:
                event.set()

    async def run(self) -> None:
        """Send queued frames until the queue stayed empty for `linger` seconds or the outbox
        closed; a failing channel closes the outbox. Started by `put` (one at a time)."""
        frames = self._frames
        try:
            while not self.closed:
                if not frames:
                    if self._empty is not None:
                        self._empty.set()
                    self._ready = trio.Event()
                    with trio.move_on_after(self._linger):
                        await self._ready.wait()
                    self._ready = None
                    if not frames:
                        return
                    continue
                data = self._next_message()
                self._writing = True
                try:
                    await self._channel.write(data)
                finally:
                    self._writing = False
                self._bytes -= len(data)
                if self._bytes < self._limit and self._room is not None:
                    self._room.set()
        except Exception as exc:  # the channel is gone (or broke); the reader sees it too
            log.debug("yamux: write failed: %s", type(exc).__name__)
            self.close()
        finally:
            self._writer = False
            if self._empty is not None and not frames:
                self._empty.set()

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
