"""Explicit traversals on loopback: pairs found and kept alive, taken once, used by a stream."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv6Address

import pytest
import trio

from meshnat import EchoService, _libp2p
from meshnat._libp2p import IHost, connection_remote, local_port
from meshnat.echo import ECHO_PROTOCOL
from meshnat.errors import ConfigError, PairExpired, PairTaken, PeerRefused, UnknownPair
from meshnat.traversal import PairState, TraversalConfig, TraversalService
from meshnat.traversal.carrier import OwnSocket
from tests.support.fake_reflectors import nodes


async def test_a_pair_is_found_taken_and_carries_a_stream_from_its_own_port() -> None:
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService())
        theirs = await b.mount(TraversalService())
        await b.mount(EchoService())
        with trio.fail_after(20):
            traversal = await ours.start(b.peer_id)
            alive = await ours.wait_for(traversal.id, PairState.ALIVE, 5)
            assert alive.rtt is not None and alive.local is not None
            assert alive.local.port == alive.local_port == traversal.table.local_port
            taken = await ours.take(alive.id)
            assert taken.state is PairState.TAKEN and traversal.closed  # keepalives stopped
            with pytest.raises(PairTaken):
                await ours.take(alive.id)
            opened = await ours.open_stream(alive.id, ECHO_PROTOCOL)
            await opened.stream.write(b"over the pair")
            assert await opened.stream.read(100) == b"over the pair"
            # the QUIC connection runs from the pair's local port to the peer's end of it
            remote = opened.connection.muxed_conn.get_remote_address()  # type: ignore[attr-defined]
            assert remote[1] == alive.remote.port
            assert theirs.traversals()[0].connection is not None


async def test_the_listening_side_can_take_and_the_peer_dials() -> None:
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService())
        await b.mount(TraversalService())
        await b.mount(EchoService())
        with trio.fail_after(20):
            traversal = await ours.start(b.peer_id)
            alive = await ours.wait_for(traversal.id, PairState.ALIVE, 5)
            await ours.take(alive.id, initiate=False)
            opened = await ours.open_stream(alive.id, ECHO_PROTOCOL)
            await opened.stream.write(b"dialled to us")
            assert await opened.stream.read(100) == b"dialled to us"


async def test_a_taken_pair_not_used_before_its_deadline_expires() -> None:
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService(TraversalConfig(take_deadline=0.3)))
        await b.mount(TraversalService())
        with trio.fail_after(20):
            traversal = await ours.start(b.peer_id)
            alive = await ours.wait_for(traversal.id, PairState.ALIVE, 5)
            await ours.take(alive.id)
            expired = await ours.wait_for(alive.id, PairState.EXPIRED, 5)
            assert expired.id == alive.id
            with pytest.raises(PairExpired):
                await ours.open_stream(alive.id, ECHO_PROTOCOL)


async def test_unknown_pairs_are_named_as_such() -> None:
    async with nodes(1) as (a,):
        service = await a.mount(TraversalService())
        with pytest.raises(UnknownPair):
            await service.take("deadbeef.1")
        with pytest.raises(UnknownPair):
            service.pair("nothing")


async def test_finished_traversals_make_room_for_new_ones() -> None:
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService(TraversalConfig(max_traversals=1,
                                                              take_deadline=0.2)))
        theirs = await b.mount(TraversalService(TraversalConfig(max_traversals=1,
                                                                take_deadline=0.2)))
        with trio.fail_after(20):
            first = await ours.start(b.peer_id)
            alive = await ours.wait_for(first.id, PairState.ALIVE, 5)
            await ours.take(alive.id)
            await ours.wait_for(alive.id, PairState.EXPIRED, 5)  # taken, never used
            await theirs.wait_for(first.id, PairState.EXPIRED, 5)  # the same on their side
            second = await ours.start(b.peer_id)  # the first one is forgotten on both sides
            assert [t.id for t in ours.traversals()] == [second.id]


async def test_a_traversal_on_the_shared_port_runs_quic_from_the_listen_ports() -> None:
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService())
        await b.mount(TraversalService())
        with trio.fail_after(20):
            traversal = await ours.start(b.peer_id, shared=True)
            assert traversal.table.local_port == a.listen_endpoint("udp").port
            alive = await ours.wait_for(traversal.id, PairState.ALIVE, 5)
            assert alive.remote.port == b.listen_endpoint("udp").port
            await ours.take(alive.id)
            conn = await ours.connect(alive.id)
            assert local_port(conn) == a.listen_endpoint("udp").port
            assert connection_remote(conn) == alive.remote


async def test_one_pair_per_traversal_is_taken_and_deadlines_must_be_sane() -> None:
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService())
        await b.mount(TraversalService())
        with trio.fail_after(20):
            traversal = await ours.start(b.peer_id)
            alive = await ours.wait_for(traversal.id, PairState.ALIVE, 5)
            with pytest.raises(ConfigError):
                await ours.take(alive.id, deadline=float("nan"))
            await ours.take(alive.id)
            for other in traversal.table.pairs():
                with pytest.raises(PairTaken):
                    await ours.take(other.id)


async def test_a_rate_limited_start_is_refused_as_such_under_the_requests_id() -> None:
    """The responder's refusal reaches the initiator as PeerRefused("rate-limited") (not as
    `MalformedMessage: reply to a request id this node did not send`), and the refused
    traversal is forgotten on both sides."""
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService())
        theirs = await b.mount(TraversalService(TraversalConfig(responder_rate=0.001,
                                                                responder_burst=1)))
        with trio.fail_after(20):
            first = await ours.start(b.peer_id)
            with pytest.raises(PeerRefused) as refused:
                await ours.start(b.peer_id)
        assert refused.value.code == "rate-limited"
        assert theirs.statistics().refused == {"peer-rate": 1}
        assert [t.id for t in ours.traversals()] == [first.id]
        assert len(theirs.traversals()) == 1


async def test_a_responder_without_a_socket_refuses_and_keeps_its_error_to_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A local failure of the responder (no socket for the traversal) is answered as a
    refusal (`unavailable`) carrying a fixed reason, not as a reset stream, and its own error
    text never goes to the peer."""
    real_open, opened = OwnSocket.open, []

    async def open_once(ip: IPv4Address | IPv6Address) -> OwnSocket:
        opened.append(ip)
        if len(opened) > 1:  # the initiator's socket opens; the responder's does not
            raise OSError(errno.EMFILE, "Too many open files (local detail)")
        return await real_open(ip)

    monkeypatch.setattr(OwnSocket, "open", staticmethod(open_once))
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService())
        await b.mount(TraversalService())
        with trio.fail_after(20), pytest.raises(PeerRefused) as refused:
            await ours.start(b.peer_id)
        assert refused.value.code == "unavailable"
        assert "local detail" not in refused.value.reason
        assert ours.traversals() == []


async def test_a_take_the_peer_cannot_serve_is_refused_without_its_local_detail(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer cannot listen on its end of the pair: the take is refused (`unavailable`),
    the reason names no port of the peer's, and the pair expires here."""
    async def port_held(host: IHost, ip: IPv4Address | IPv6Address, port: int) -> str:
        raise OSError(errno.EADDRINUSE, f"port {port} held")

    monkeypatch.setattr(_libp2p, "listen_quic", port_held)
    async with nodes(2) as (a, b):
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService())
        theirs = await b.mount(TraversalService())
        with trio.fail_after(20):
            traversal = await ours.start(b.peer_id)
            alive = await ours.wait_for(traversal.id, PairState.ALIVE, 5)
            with pytest.raises(PeerRefused) as refused:
                await ours.take(alive.id)  # the peer must listen: it cannot
        assert refused.value.code == "unavailable"
        their_port = theirs.traversals()[0].table.local_port
        assert str(their_port) not in refused.value.reason
        assert ours.pair(alive.id)[1].state is PairState.EXPIRED
