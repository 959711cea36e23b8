"""A trio stream as the read/write/close object py-libp2p's layers expect of a connection."""

from __future__ import annotations

import trio


class StreamAdapter:
    """`read`, `write` and `close` over one end of a trio stream (a memory or lockstep pair)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def read(self, n: int | None = None) -> bytes:
        return await self.stream.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()
