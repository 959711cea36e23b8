"""Stream semantics of meshnat's QUIC transport between two endpoints on loopback.

Half-close, reset, read timeout, and the receive bound: a reader that stops reading holds at
most `RECEIVE_LIMIT` plus one window of unread data, and every byte still arrives once it
reads again.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamError,
    MuxedStreamReset,
)

from meshnat._libp2p.quic import QuicConn, QuicEndpoint, QuicStream
from meshnat._libp2p.quic import connection as quic_connection
from meshnat._libp2p.quic import stream as quic_stream
from meshnat._libp2p.quic.stream import RECEIVE_LIMIT
from meshnat._libp2p.quic.tls import configuration, libp2p_certificate

WINDOW = 1 << 20


def endpoint(*, server: bool, read_timeout: float | None = None) -> tuple[QuicEndpoint, ID]:
    pair = create_new_key_pair()
    certificate = libp2p_certificate(pair.private_key)
    limits = {"max_stream_data": WINDOW, "max_data": 4 * WINDOW, "idle_timeout": 30.0}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return QuicEndpoint(
        sock, client=configuration(certificate, is_client=True, **limits),
        server=configuration(certificate, is_client=False, **limits) if server else None,
        read_timeout=read_timeout), ID.from_pubkey(pair.public_key)


@asynccontextmanager
async def connected(read_timeout: float | None = None
                    ) -> AsyncIterator[tuple[QuicConn, QuicConn]]:
    """(dialler's connection, listener's connection) over loopback."""
    dialler, _ = endpoint(server=False)
    listener, listener_id = endpoint(server=True, read_timeout=read_timeout)
    accepted: trio.MemorySendChannel[QuicConn]
    accepted, incoming = trio.open_memory_channel[QuicConn](1)
    listener.on_accept = accepted.send_nowait
    async with trio.open_nursery() as nursery:
        await nursery.start(dialler.serve)
        await nursery.start(listener.serve)
        conn = await dialler.dial(listener.local_address, listener_id, timeout=10)
        yield conn, await incoming.receive()
        await dialler.close()
        await listener.close()


async def read_all(stream: QuicStream) -> bytes:
    data = b""
    with pytest.raises(MuxedStreamEOF):
        while True:
            data += await stream.read(1 << 16)
    return data


async def test_half_close_delivers_everything_then_the_reply() -> None:
    with trio.fail_after(30):
        async with connected() as (near, far):
            stream = await near.open_stream()
            await stream.write(b"question" * 10_000)
            await stream.close_write()
            with pytest.raises(MuxedStreamClosed):
                await stream.write(b"late")
            remote = await far.accept_stream()
            assert await read_all(remote) == b"question" * 10_000
            await remote.write(b"answer")
            await remote.close()
            assert await read_all(stream) == b"answer"


async def test_a_reset_reaches_the_reader_and_stops_the_writer() -> None:
    with trio.fail_after(30):
        async with connected() as (near, far):
            stream = await near.open_stream()
            await stream.write(b"partial")
            remote = await far.accept_stream()
            assert await remote.read() == b"partial"
            await stream.reset()
            with pytest.raises(MuxedStreamReset):
                await remote.read()
            with pytest.raises(MuxedStreamReset):
                await stream.write(b"more")


async def test_a_read_with_nothing_arriving_times_out() -> None:
    with trio.fail_after(30):
        async with connected(read_timeout=0.2) as (near, far):
            stream = await near.open_stream()
            await stream.write(b"x")
            remote = await far.accept_stream()
            assert await remote.read() == b"x"
            with pytest.raises(MuxedStreamError, match="read timeout"):
                await remote.read()


async def test_a_reader_that_stops_bounds_what_is_buffered_and_loses_nothing() -> None:
    total = 3 * RECEIVE_LIMIT
    piece = bytes(range(256)) * 256
    with trio.fail_after(120):
        async with connected() as (near, far), trio.open_nursery() as nursery:
            stream = await near.open_stream()
            written = trio.Event()

            async def write_all() -> None:
                for _ in range(total // len(piece)):
                    await stream.write(piece)
                await stream.close_write()
                written.set()

            nursery.start_soon(write_all)
            remote = await far.accept_stream()
            await far.intake_paused.wait()
            assert not written.is_set()
            assert RECEIVE_LIMIT < remote.unread <= RECEIVE_LIMIT + 4 * WINDOW
            digest = hashlib.sha256()
            received = 0
            try:
                while True:
                    data = await remote.read(1 << 20)
                    digest.update(data)
                    received += len(data)
            except MuxedStreamEOF:
                pass
            await written.wait()
            assert received == total
            assert digest.digest() == hashlib.sha256(piece * (total // len(piece))).digest()


async def test_more_streams_than_the_peer_allows_at_once_wait_for_credit() -> None:
    """qh3 grants 100 concurrent bidirectional streams; 250 at once all get through."""
    with trio.fail_after(60):
        async with connected() as (near, far), trio.open_nursery() as nursery:
            async def answer() -> None:
                for _ in range(250):
                    remote = await far.accept_stream()
                    nursery.start_soon(echo, remote)

            async def echo(remote: QuicStream) -> None:
                await remote.write(await read_all(remote))
                await remote.close()

            async def ask(index: int) -> None:
                stream = await near.open_stream()
                await stream.write(b"%d" % index)
                await stream.close_write()
                assert await read_all(stream) == b"%d" % index
                await stream.close()

            nursery.start_soon(answer)
            async with trio.open_nursery() as askers:
                for index in range(250):
                    askers.start_soon(ask, index)


class _FailingCore:
    """qh3's native core, except that the next `poll_transmit` raises what qh3 2.1 raises
    for a stale stream reservation (see `core.py`); every later call goes to the core."""

    def __init__(self, core: object) -> None:
        self._core = core
        self.failed = False

    def poll_transmit(self, now: float) -> object:
        if not self.failed:
            self.failed = True
            raise ValueError("reserved stream is missing")
        return self._core.poll_transmit(now)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._core, name)


async def test_a_qh3_failure_ends_that_connection_cleanly_and_the_endpoint_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    dialler, _ = endpoint(server=False)
    listener, listener_id = endpoint(server=True)
    accepted: trio.MemorySendChannel[QuicConn]
    accepted, incoming = trio.open_memory_channel[QuicConn](2)
    listener.on_accept = accepted.send_nowait
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(dialler.serve)
            await nursery.start(listener.serve)
            near = await dialler.dial(listener.local_address, listener_id, timeout=10)
            far = await incoming.receive()
            stream = await near.open_stream()
            await stream.write(b"before")
            remote = await far.accept_stream()
            assert await remote.read() == b"before"

            near.quic._core = _FailingCore(near.quic._core)  # type: ignore[assignment]
            with pytest.raises(MuxedStreamReset, match="reserved stream is missing"):
                await stream.write(b"lost")
            assert near.is_closed and "reserved stream is missing" in (near.failure or "")
            with pytest.raises(MuxedStreamReset):
                await stream.read()
            with pytest.raises(MuxedStreamReset):  # the CONNECTION_CLOSE reached the peer
                await remote.read()
            assert any(r.levelname == "WARNING" and "datagrams_to_send" in r.getMessage()
                       for r in caplog.records)

            again = await dialler.dial(listener.local_address, listener_id, timeout=10)
            other = await again.open_stream()
            await other.write(b"after")
            assert await (await (await incoming.receive()).accept_stream()).read() == b"after"
            await dialler.close()
            await listener.close()


@pytest.mark.parametrize("call", ["_open_stream", "send_stream_data"])
async def test_any_error_from_a_qh3_call_closes_the_connection_naming_the_call(
        call: str) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("core broke")

    with trio.fail_after(30):
        async with connected() as (near, far):
            stream = await near.open_stream()
            await stream.write(b"before")
            assert await (await far.accept_stream()).read() == b"before"
            setattr(near.quic, call, broken)
            with pytest.raises((MuxedConnUnavailable, MuxedStreamReset), match="core broke"):
                if call == "_open_stream":
                    await near.open_stream()
                else:
                    await stream.write(b"lost")
            assert near.is_closed
            assert f"qh3 {call.lstrip('_')} failed: RuntimeError('core broke')" == near.failure
            with pytest.raises(MuxedStreamReset):
                await stream.read()


async def test_an_echo_that_answers_more_than_it_reads_does_not_stall(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The echo's writes wait for acknowledgments while its unread data is over the limit.
    The intake used to stop by dropping datagrams, acknowledgments included, so the echo's
    writer never progressed, it never read again, and both ends waited forever."""
    limit = 256 << 10
    monkeypatch.setattr(quic_connection, "RECEIVE_LIMIT", limit)
    monkeypatch.setattr(quic_stream, "RECEIVE_LIMIT", limit)
    piece = bytes(range(256)) * 256
    pieces = 64  # 4 MiB sent, 8 MiB answered
    paused: list[bool] = []
    read: list[bytes] = []
    with trio.fail_after(60):
        async with connected() as (near, far), trio.open_nursery() as nursery:
            stream = await near.open_stream()

            async def send() -> None:
                for _ in range(pieces):
                    await stream.write(piece)
                await stream.close_write()

            async def echo_twice() -> None:
                remote = await far.accept_stream()
                try:
                    while True:
                        data = await remote.read(len(piece))
                        paused.append(far.paused)
                        read.append(data)
                        await remote.write(data + data)
                except MuxedStreamEOF:
                    await remote.close_write()

            nursery.start_soon(send)
            nursery.start_soon(echo_twice)
            received = bytearray()
            with contextlib.suppress(MuxedStreamEOF):
                while True:
                    received += await stream.read(1 << 20)
    assert any(paused)  # the echo's intake was held at least once
    assert b"".join(read) == piece * pieces
    assert bytes(received) == b"".join(data + data for data in read)
