"""A QUIC dial's first flight, replayed and abandoned (what the punch initiator's early dial
needs, `traversal/early.py`), against a bare UDP socket on loopback that never answers.

Datagrams from one socket to another on loopback arrive in order, so a marker sent after an
action shows what the action sent before it, with no wait standing in for "nothing came".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.peer.id import ID

from meshnat._libp2p.quic import QuicEndpoint
from meshnat.endpoint import Endpoint
from meshnat.traversal import TraversalService
from meshnat.traversal.budget import SendBudget
from tests.mesh.test_quic_streams import connected, endpoint
from tests.support.fake_reflectors import nodes

MARKER = b"marker"


@asynccontextmanager
async def dialling_a_silent_socket() -> AsyncIterator[
        tuple[QuicEndpoint, tuple[str, int], trio.socket.SocketType, trio.CancelScope,
              trio.Event]]:
    """A dial from an endpoint to a UDP socket that only receives: (the endpoint, the
    socket's address, the socket, the dial's scope, set once the dial ended)."""
    silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await silent.bind(("127.0.0.1", 0))
    address: tuple[str, int] = silent.getsockname()
    dialler, _ = endpoint(server=False)
    with silent, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(dialler.serve)
            scope, ended = trio.CancelScope(), trio.Event()

            async def dial() -> None:
                try:
                    with scope:
                        await dialler.dial(address, ID(b"\x00\x01x"), timeout=20)
                finally:
                    ended.set()

            nursery.start_soon(dial)
            yield dialler, address, silent, scope, ended
            nursery.cancel_scope.cancel()


async def next_datagram(sock: trio.socket.SocketType) -> bytes:
    data, _ = await sock.recvfrom(65536)
    return data


async def sent_until_marker(dialler: QuicEndpoint, address: tuple[str, int],
                            sock: trio.socket.SocketType) -> list[bytes]:
    """What `dialler` sent to `sock` so far (a marker sent now ends it)."""
    dialler.send_datagrams([(MARKER, address)])
    received = []
    while (data := await next_datagram(sock)) != MARKER:
        received.append(data)
    return received


async def test_the_first_flight_is_replayed_byte_for_byte_while_unanswered() -> None:
    async with dialling_a_silent_socket() as (dialler, address, silent, _, _):
        first = [await next_datagram(silent), *await sent_until_marker(dialler, address,
                                                                       silent)]
        assert first and len(first[0]) >= 1200 and first[0][0] & 0x80  # a padded Initial
        assert dialler.replay_first_flight(address)
        assert await sent_until_marker(dialler, address, silent) == first
        assert not dialler.replay_first_flight(("127.0.0.1", 9))  # no dial there


@pytest.mark.parametrize("silenced", [True, False])
async def test_a_silenced_dial_ends_without_a_connection_close(silenced: bool) -> None:
    """Abandoned early dials go to addresses not proven yet: no padded CONNECTION_CLOSE
    follows them there. Without `silence_dial` the cancelled dial sends one (the control)."""
    async with dialling_a_silent_socket() as (dialler, address, silent, scope, ended):
        await next_datagram(silent)
        await sent_until_marker(dialler, address, silent)
        if silenced:
            dialler.silence_dial(address)
        scope.cancel()
        await ended.wait()
        assert (await sent_until_marker(dialler, address, silent) == []) is silenced


async def test_an_answered_dial_has_nothing_to_replay() -> None:
    async with connected() as (conn, _):
        assert conn.answered
        assert not conn.endpoint.replay_first_flight(conn.remote_address)
        conn.endpoint.silence_dial(conn.remote_address)
        assert not conn.quiet  # a connection the peer answered closes as usual


async def test_a_traversal_closed_mid_early_dial_ends_that_dial_silently() -> None:
    """A punch whose TCP path won closes its traversal while the early dial still waits for
    an answer: the dial ends with it (its window's timer was the traversal's), and without a
    CONNECTION_CLOSE; before, it went on resending Initials at qh3's PTO."""
    silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await silent.bind(("127.0.0.1", 0))
    host, port = silent.getsockname()
    target = Endpoint.parse(f"{host}:{port}")
    with silent, trio.fail_after(30):
        async with nodes(2) as (a, b):
            await a.connect(b.peer_info())
            service = await a.mount(TraversalService())
            traversal = await service.adopt(bytes(range(16)), b.peer_id, [target],
                                            budget=SendBudget(paid=2000), dial_early=True)
            while not (await next_datagram(silent))[0] & 0x80:  # probes, then the Initial
                pass
            assert traversal.early is not None and a.udp.replay_first_flight(target)
            await a.udp.sendto(MARKER, target)
            while await next_datagram(silent) != MARKER:  # the rest, and the replayed copy
                pass
            await service.close(traversal.id)
            await traversal.early.done.wait()
            assert traversal.early.connection is None
            assert not a.udp.replay_first_flight(target)  # the dial is gone
            await a.udp.sendto(MARKER, target)
            assert await next_datagram(silent) == MARKER  # nothing came before it
