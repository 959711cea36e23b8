"""The plain forwarder the relay benchmarks measure meshnat's relay against."""

from __future__ import annotations

import trio

CHUNK = 65536


async def pipe_both_ways(a: trio.SocketStream, b: trio.SocketStream) -> None:
    """Copy bytes both ways until each side has ended, passing each half-close on."""

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        while data := await src.receive_some(CHUNK):
            await dst.send_all(data)
        await dst.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, a, b)
        nursery.start_soon(pipe, b, a)
