"""A QUIC stream delivers every byte before its end, or fails (`_libp2p.quic_stream`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.transport.quic.config import QUICTransportConfig
from libp2p.transport.quic.exceptions import QUICStreamResetError
from libp2p.transport.quic.stream import QUICStream, StreamDirection

from meshnat._libp2p import quic_stream


class Connection(SimpleNamespace):
    """The parts of a QUIC connection a stream touches."""

    def __init__(self) -> None:
        super().__init__(_transport=SimpleNamespace(_config=QUICTransportConfig()),
                         resets=[])
        self._quic = SimpleNamespace(reset_stream=lambda sid, code: self.resets.append(code))

    def remote_peer_id(self) -> str:
        return "peer"

    async def _transmit(self) -> None:
        pass

    def _remove_stream(self, stream_id: int) -> None:
        pass


def new_stream() -> Any:
    quic_stream.install()
    return QUICStream(Connection(), 0, StreamDirection.INBOUND, None, None)  # type: ignore[arg-type]


async def read_to_end(stream: Any) -> bytes:
    data = b""
    with pytest.raises(EOFError):
        while True:
            data += await stream.read(65536)
    return data


async def test_the_tail_and_fin_that_arrive_during_a_read_are_read_before_the_end() -> None:
    """py-libp2p's read() parks on a second lock between 'buffer empty' and 'FIN seen'; the
    tail and FIN land right then. Its read reported the end with b"tail" still buffered."""
    stream, got = new_stream(), list[bytes]()
    async with trio.open_nursery() as nursery:
        async with stream._state_lock:
            nursery.start_soon(lambda: _collect(stream, got))
            await trio.testing.wait_all_tasks_blocked()
            await stream.handle_data_received(b"tail", end_stream=False)
            stream._read_closed = True  # the FIN, noted before the state lock is free
        await stream.handle_data_received(b"", end_stream=True)
    assert got == [b"tail"]


async def _collect(stream: Any, got: list[bytes]) -> None:
    got.append(await read_to_end(stream))


async def test_data_and_fin_together_are_all_read() -> None:
    stream = new_stream()
    await stream.handle_data_received(b"a" * 1000, end_stream=False)
    await stream.handle_data_received(b"b" * 10, end_stream=True)
    assert await read_to_end(stream) == b"a" * 1000 + b"b" * 10


async def test_data_beyond_the_buffer_resets_the_stream_instead_of_vanishing() -> None:
    stream = new_stream()
    await stream.handle_data_received(b"x" * stream.MAX_RECEIVE_BUFFER_SIZE, end_stream=False)
    await stream.handle_data_received(b"lost", end_stream=True)
    assert stream._connection.resets == [1]
    size = stream.MAX_RECEIVE_BUFFER_SIZE
    assert len(await stream.read(-1)) == size  # what came before the hole, then the error
    with pytest.raises(QUICStreamResetError):
        await stream.read(10)
