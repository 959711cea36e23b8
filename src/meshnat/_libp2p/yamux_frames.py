"""Yamux (`/yamux/1.0.0`) frames and receive windows: the pure core, no I/O.

Wire format (hashicorp/yamux spec.md, as go-, rust- and js-libp2p speak it): a 12-byte header
`version:u8 type:u8 flags:u16 stream_id:u32 length:u32`, big-endian, then `length` bytes of
payload for DATA frames only. WINDOW_UPDATE's length is a credit increment, PING's an opaque
value echoed back with ACK, GO_AWAY's an error code.

`FrameParser` cuts frames out of whatever pieces the secure channel delivers (one frame per
Noise message when the peer is meshnat, any split otherwise) and rejects a bad version, an
unknown type or a DATA frame larger than any window with `YamuxProtocolError`.

`ReceiveWindow` is go-yamux's receive-window auto-tuning (libp2p/go-yamux `sendWindowUpdate`):
credit is topped up once the reader has consumed half of the window; if that happened within
4 RTTs of the previous update the window doubles, up to `MAX_WINDOW` (16 MiB, go-libp2p's
`MaxStreamWindowSize`). A window only grows while its reader keeps up, so a slow reader
(e.g. a relay whose other side is slow) never makes the window, and the bytes buffered for
it, larger. A reader that kept up and then stalls can still be made to buffer its whole
window, so the growth of all windows of one connection draws on one `WindowBudget` (go-yamux
reserves it from the connection's resource-manager memory scope): a peer cannot make one
connection buffer more than its streams' initial windows plus that budget.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshnat.errors import RemoteProtocolError

HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size

DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR = 0, 1

INITIAL_WINDOW = 256 * 1024
"""Every stream's window when it opens (spec)."""

MAX_WINDOW = 16 * 1024 * 1024
"""The largest receive window auto-tuning grows to (go-libp2p's MaxStreamWindowSize)."""

CONNECTION_GROWTH = 32 * 1024 * 1024
"""Bytes all receive windows of one connection may grow beyond their initial size together."""

NOISE_PLAINTEXT = 65_535 - 16
"""Largest plaintext one Noise transport message carries (libp2p noise spec)."""

FRAME_PAYLOAD = NOISE_PLAINTEXT - HEADER_SIZE
"""Payload of the largest DATA frame sent: header and payload fill one Noise message
(65,507 bytes)."""


class YamuxProtocolError(RemoteProtocolError):
    """The peer broke the Yamux protocol (bad header, window overrun, stream id misuse)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One received frame; `payload` is empty except for DATA."""

    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes = b""


def encode(type_: int, flags: int, stream_id: int, length: int) -> bytes:
    """A frame header (for DATA, the payload follows it)."""
    return HEADER.pack(0, type_, flags, stream_id, length)


class FrameParser:
    """Frames out of a byte stream delivered in arbitrary pieces."""

    def __init__(self) -> None:
        self._pending = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[Frame]:
        """Every complete frame in what was held plus `data`, in order."""
        if self._pending:
            self._pending += data
            buffer: bytes | bytearray = self._pending
        else:
            buffer = data
        frames: list[Frame] = []
        offset, end = 0, len(buffer)
        unpack = HEADER.unpack_from
        while end - offset >= HEADER_SIZE:
            version, type_, flags, stream_id, length = unpack(buffer, offset)
            if version != 0 or type_ > GO_AWAY:
                raise YamuxProtocolError("yamux: bad frame header")
            if type_ != DATA:
                frames.append(Frame(type_, flags, stream_id, length))
                offset += HEADER_SIZE
                continue
            if length > MAX_WINDOW:
                raise YamuxProtocolError("yamux: DATA frame larger than any window")
            body = offset + HEADER_SIZE
            if end - body < length:
                break
            frames.append(Frame(DATA, flags, stream_id, length, bytes(buffer[body:body + length])))
            offset = body + length
        if buffer is self._pending:
            del self._pending[:offset]
        elif offset < end:
            self._pending += memoryview(buffer)[offset:]
        return frames


class WindowBudget:
    """What the receive windows of one connection may still grow by, together."""

    def __init__(self, available: int = CONNECTION_GROWTH) -> None:
        self.available = available


class ReceiveWindow:
    """One stream's receive credit: what the peer may send, when to grant more."""

    def __init__(self, now: float, budget: WindowBudget, initial: int = INITIAL_WINDOW,
                 maximum: int = MAX_WINDOW) -> None:
        self.size = initial
        """The window the peer is granted (grows by auto-tuning)."""
        self.credit = initial
        """Bytes the peer may still send before the next update."""
        self._initial, self._maximum, self._budget = initial, maximum, budget
        self._epoch = now

    def release(self) -> None:
        """The stream is gone: its growth returns to the connection's budget (once)."""
        self._budget.available += self.size - self._initial
        self._initial = self.size

    def receive(self, length: int) -> None:
        """The peer sent `length` bytes; raises YamuxProtocolError past its credit."""
        if length > self.credit:
            raise YamuxProtocolError("yamux: DATA beyond the receive window")
        self.credit -= length

    def update(self, buffered: int, now: float, rtt: float) -> int:
        """The increment to send once the reader holds `buffered` unread bytes (0: none yet)."""
        delta = self.size - self.credit - buffered
        if delta < self.size // 2:
            return 0
        if rtt > 0 and now - self._epoch < 4 * rtt and self.size < self._maximum:
            grown = min(2 * self.size, self._maximum, self.size + self._budget.available)
            self._budget.available -= grown - self.size
            self.size = grown
            delta = self.size - self.credit - buffered
        self._epoch = now
        self.credit += delta
        return delta
