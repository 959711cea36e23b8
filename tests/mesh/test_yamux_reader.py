"""The Yamux reader keeps reading while the replies it owes cannot be sent (`_libp2p.yamux`).

The connection here is a lockstep stream: a write completes only when the other side reads
it, the limit of a full TCP send buffer. The test side plays the remote peer with raw frames.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from meshnat._libp2p.yamux import MAX_PENDING_REPLIES, Yamux
from meshnat._libp2p.yamux_outbox import LINGER
from tests.support.fake_reflectors import nodes
from tests.support.stream_adapter import StreamAdapter

HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length
TYPE_PING, FLAG_SYN, FLAG_ACK = 2, 1, 2


def ping(nonce: int) -> bytes:
    return HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, nonce)


class LockstepConn(StreamAdapter):
    """What Yamux needs of a secure connection, over one end of a lockstep stream."""

    is_initiator = False


@asynccontextmanager
async def muxer() -> AsyncIterator[tuple[Yamux, trio.abc.Stream]]:
    ours, theirs = trio.testing.lockstep_stream_pair()
    peer = ID.from_pubkey(create_new_key_pair().public_key)
    yamux = Yamux(LockstepConn(ours), peer, is_initiator=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(yamux.start)
        await yamux.event_started.wait()
        yield yamux, theirs
        nursery.cancel_scope.cancel()


async def read_pongs(stream: trio.abc.Stream, count: int) -> list[int]:
    """Nonces of the next `count` ping replies (other frames, e.g. our own pings, skipped)."""
    buffer, nonces = b"", list[int]()
    while len(nonces) < count:
        buffer += await stream.receive_some(4096)
        while len(buffer) >= HEADER.size:
            _, typ, flags, _, value = HEADER.unpack_from(buffer)
            buffer = buffer[HEADER.size:]
            if typ == TYPE_PING and flags & FLAG_ACK:
                nonces.append(value)
    return nonces


async def test_pings_are_read_while_the_peer_reads_none_of_the_replies() -> None:
    with trio.fail_after(30):  # a hang guard only: stock py-libp2p deadlocks at the 2nd ping
        async with muxer() as (_, theirs):
            for nonce in range(1, 101):
                await theirs.send_all(ping(nonce))  # completes only once our reader read it
            assert await read_pongs(theirs, 100) == list(range(1, 101))


async def test_a_peer_that_never_reads_its_replies_loses_the_connection() -> None:
    with trio.fail_after(60):
        async with muxer() as (yamux, theirs):
            with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
                for nonce in range(MAX_PENDING_REPLIES + 200):
                    await theirs.send_all(ping(nonce))
            assert not yamux.is_established


async def test_a_close_cancelled_while_it_flushes_still_closes_and_later_closes_return() -> None:
    """The peer reads nothing, so GO_AWAY never leaves; the first close is cancelled there
    (a node torn down under cancellation). Before, `event_closed` was never set and every
    later close, the session's own shielded one included, waited forever."""
    async with muxer() as (yamux, theirs):
        first = trio.CancelScope()

        async def close_under(scope: trio.CancelScope) -> None:
            with scope:
                await yamux.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_under, first)
            await trio.testing.wait_all_tasks_blocked()
            assert not yamux.is_established and not yamux.is_closed  # stuck on the GO_AWAY
            first.cancel()
        assert yamux.is_closed
        with trio.fail_after(5):
            await yamux.close()
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            await theirs.send_all(ping(1))  # the channel was closed too


async def test_the_connections_a_node_makes_and_accepts_use_this_yamux() -> None:
    with trio.fail_after(20):
        async with nodes(2) as (a, b):
            tcp = [addr for addr in b.addrs if "/tcp/" in str(addr)]
            await a.connect(PeerInfo(b.peer_id, tcp))
            for node, peer in ((a, b), (b, a)):
                (conn,) = node.host.get_network().get_connections(peer.peer_id)
                assert type(conn.muxed_conn) is Yamux


async def test_an_idle_connection_holds_no_writer_task_and_a_frame_starts_one(
        autojump_clock: trio.testing.MockClock) -> None:
    async with muxer() as (yamux, theirs):
        assert await read_pongs_or_pings(theirs) == [(TYPE_PING, FLAG_SYN)]  # its ping at start
        await trio.sleep(LINGER * 2)  # idle past the linger: the writer task ended
        assert not yamux._outbox.writer_running
        await theirs.send_all(ping(7))  # its answer needs a writer again
        assert await read_pongs(theirs, 1) == [7]
        await trio.sleep(LINGER * 2)
        assert not yamux._outbox.writer_running


async def read_pongs_or_pings(stream: trio.abc.Stream) -> list[tuple[int, int]]:
    """(type, flags) of the frames in the next read."""
    data = await stream.receive_some(4096)
    return [HEADER.unpack_from(data, i)[1:3] for i in range(0, len(data), HEADER.size)]


async def test_a_noise_message_that_fails_authentication_closes_only_its_connection() -> None:
    with trio.fail_after(20):
        async with nodes(2) as (a, b):
            tcp = [addr for addr in b.addrs if "/tcp/" in str(addr)]
            await a.connect(PeerInfo(b.peer_id, tcp))
            (theirs,) = a.host.get_network().get_connections(b.peer_id)
            (ours,) = b.host.get_network().get_connections(a.peer_id)
            # a well-framed Noise message (2-byte length, 32 bytes) that is not a ciphertext,
            # sent by the connection's own writer task (a second writer on the socket would
            # race it: trio.BusyResourceError)
            theirs.muxed_conn._channel._encrypt = lambda ad, plain: bytes(32)
            theirs.muxed_conn._ping()
            await ours.muxed_conn.event_closed.wait()
            await a.connect(PeerInfo(b.peer_id, tcp))  # b still accepts connections
            assert a.host.get_network().get_connections(b.peer_id)
