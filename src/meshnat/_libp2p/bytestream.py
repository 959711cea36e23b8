"""A py-libp2p stream seen as a trio-style byte stream, for piping raw bytes (tunnels).

py-libp2p specifics handled here:
- `read()` raises StreamEOF at the end of the stream; `receive_some()` returns b"" instead.
  A QUIC stream closed cleanly in both directions answers a read with an error that py-libp2p
  maps to StreamReset; that is end of stream too.
- Half-close is `close_write()`: `close()` on a QUIC stream closes both directions, and on any
  stream also unregisters it from its connection.
- A write waits for the peer's window as long as it takes (meshnat's Yamux has no 5 s limit
  as py-libp2p's had), so backpressure lasts as long as the caller's own (idle) timeout.
"""

from __future__ import annotations

from typing import Any, cast

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from meshnat._libp2p.streams import map_peer_errors, reset_quietly


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
        with map_peer_errors(self._stage):
            await self.stream.write(data)

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


def _closed_cleanly(stream: INetStream) -> bool:
    """A QUIC stream whose both sides finished (FIN each way), not one that was reset."""
    muxed = cast(Any, stream).muxed_stream
    is_reset = getattr(muxed, "is_reset", None)
    return callable(is_reset) and not is_reset() and bool(getattr(muxed, "_read_closed", False))
