"""A py-libp2p stream seen as a trio-style byte stream, for piping raw bytes (tunnels).

py-libp2p specifics handled here:
- `read()` raises StreamEOF at the end of the stream; `receive_some()` returns b"" instead.
  A QUIC stream closed cleanly in both directions answers a read with an error that py-libp2p
  maps to StreamReset; that is end of stream too.
- Half-close is `close_write()`: `close()` on a QUIC stream closes both directions, and on any
  stream also unregisters it from its connection.
- Yamux `write()` gives up (MuxedStreamError) after waiting 5 s for the peer to open its
  receive window, so any reader that pauses for 5 s would kill a tunnel. `send_all()` waits
  for the window itself, without that limit, and writes no more than the window allows, so
  backpressure can last as long as the caller's own (idle) timeout.
"""

from __future__ import annotations

from typing import Any, cast

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from meshnat._libp2p.streams import map_peer_errors, reset_quietly

_WINDOW_POLL = 0.01
"""Seconds between send-window checks: py-libp2p's own Yamux polling period."""


class StreamBytes:
    """`receive_some` / `send_all` / `send_eof` over a libp2p stream; errors are mapped to
    PeerUnavailable (and PeerTimeout) by `map_peer_errors`."""

    def __init__(self, stream: INetStream, stage: str = "tunnel") -> None:
        self.stream, self._stage = stream, stage

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` bytes as soon as any arrive; b"" once the peer half-closed."""
        with map_peer_errors(self._stage):
            try:
                return bytes(await self.stream.read(max_bytes))
            except StreamEOF:
                return b""
            except StreamReset:
                if _closed_cleanly(self.stream):
                    return b""
                raise

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        with map_peer_errors(self._stage):
            while view:
                window = await self._send_window()
                size = len(view) if window is None else min(len(view), window)
                await self.stream.write(bytes(view[:size]))
                view = view[size:]

    async def send_eof(self) -> None:
        """Half-close: the peer reads EOF, this side can still receive."""
        with map_peer_errors(self._stage):
            await cast(Any, self.stream).close_write()

    async def aclose(self) -> None:
        """Close both directions (bounded to 1 s); a failure resets the stream instead."""
        with trio.move_on_after(1) as scope:
            try:
                await self.stream.close()
            except Exception:  # the stream is being discarded; reset it instead
                scope.cancel()
        if scope.cancelled_caught:
            await reset_quietly(self.stream)

    async def reset(self) -> None:
        await reset_quietly(self.stream)

    async def _send_window(self) -> int | None:
        """Bytes the Yamux peer will accept now (waiting while it is 0); None if not Yamux."""
        muxed = cast(Any, self.stream).muxed_stream
        if not isinstance(getattr(muxed, "send_window", None), int):
            return None  # QUIC has its own flow control and no 5 s limit
        while True:
            if muxed.send_window > 0 or muxed.closed or muxed.send_closed:
                return max(1, int(muxed.send_window))
            await trio.sleep(_WINDOW_POLL)  # py-libp2p has no event for a window update


def _closed_cleanly(stream: INetStream) -> bool:
    """A QUIC stream whose both sides finished (FIN each way), not one that was reset."""
    muxed = cast(Any, stream).muxed_stream
    is_reset = getattr(muxed, "is_reset", None)
    return callable(is_reset) and not is_reset() and bool(getattr(muxed, "_read_closed", False))
