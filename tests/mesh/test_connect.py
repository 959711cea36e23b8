"""Connector on loopback: the ladder (existing, direct, relayed) and the upgrade to direct."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing
from libp2p.host.ping import ID as PING_PROTOCOL

from meshnat import EchoService, MeshNode
from meshnat._libp2p import (
    ID,
    INetConn,
    PeerInfo,
    is_relayed,
    open_stream_on,
    reset_quietly,
    wait_closed,
)
from meshnat._libp2p.dial import dial_once
from meshnat._libp2p.quic.connection import QuicConn
from meshnat._libp2p.yamux import Yamux
from meshnat.connect import ConnectConfig, Connector
from meshnat.echo import ECHO_PROTOCOL, echo
from meshnat.errors import ConfigError, PeerUnavailable
from meshnat.events import (
    EventSink,
    MeshEvent,
    PathEstablished,
    PathLost,
    PathUpgraded,
    PunchAbandoned,
    PunchSucceeded,
    ignore_events,
)
from meshnat.punch import HolePuncher, PunchConfig
from meshnat.punch.health import HealthConfig
from meshnat.punch.repunch import RepunchConfig
from meshnat.relay import RelayClient, RelayService
from tests.support.fake_reflectors import LOOPBACK, nodes


async def test_a_peer_known_only_through_a_relay_is_relayed_then_upgraded() -> None:
    events: list[MeshEvent] = []
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            relay, a, b = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(3)]
            await relay.mount(RelayService())
            await (await b.mount(RelayClient())).reserve(relay.peer_info())
            await b.mount(HolePuncher())
            await b.mount(EchoService())
            connector = await a.mount(Connector(
                relays=[relay.peer_info()], relay_client=await a.mount(RelayClient()),
                puncher=await a.mount(HolePuncher(events=events.append)),
                events=events.append))
            path = await connector.connect(PeerInfo(b.peer_id, []))
            assert path.kind == "relayed" and path.remote is None
            assert path.rtt is not None and path.time_to_direct is None
            assert path.attempts == (f"relayed via {relay.peer_id}",)
            assert await connector.wait_direct(b.peer_id, 10)
            upgraded = await connector.connect(PeerInfo(b.peer_id, []))
            assert upgraded.kind == "punched" and not is_relayed(upgraded.connection)
            assert upgraded.time_to_direct is not None and upgraded.rtt is not None
            assert upgraded.to_json()["attempts"] == ["existing connection"]
            assert await echo(a, PeerInfo(b.peer_id, []), b"hi") == b"hi"  # new streams: direct
            await wait_closed(path.connection)  # the relayed one, once idle
            punched = connector.last_punch(b.peer_id)
            assert punched is not None and punched.connection is upgraded.connection
    kinds = [type(e) for e in events]
    assert kinds[0] is PathEstablished and PunchSucceeded in kinds and PathUpgraded in kinds


class CountingRelayClient(RelayClient):
    """A RelayClient that counts the circuits it was asked to dial."""

    dials = 0

    async def dial(self, relay: PeerInfo, target: ID) -> INetConn:
        self.dials += 1
        return await super().dial(relay, target)


async def _relayed_pair(stack: AsyncExitStack, config: ConnectConfig,
                        punch: PunchConfig | None = None,
                        relay_client: RelayClient | None = None,
                        puncher: HolePuncher | None = None,
                        events: EventSink = ignore_events, b_punch: PunchConfig | None = None,
                        ) -> tuple[MeshNode, MeshNode, Connector]:
    relay, a, b = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(3)]
    await relay.mount(RelayService())
    await (await b.mount(RelayClient())).reserve(relay.peer_info())
    await b.mount(HolePuncher(b_punch))
    await b.mount(EchoService())
    connector = await a.mount(Connector(
        relays=[relay.peer_info()], relay_client=await a.mount(relay_client or RelayClient()),
        puncher=await a.mount(puncher or HolePuncher(punch)), config=config, events=events))
    return a, b, connector


async def test_suspecting_a_healthy_punched_path_dials_one_circuit_per_interval() -> None:
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            client, puncher = CountingRelayClient(), HolePuncher()
            a, b, connector = await _relayed_pair(
                stack, ConnectConfig(suspect_circuit_interval=3600), relay_client=client,
                puncher=puncher)
            first = (await connector.connect(PeerInfo(b.peer_id, []))).connection
            assert await connector.wait_direct(b.peer_id, 10)
            await wait_closed(first)  # the relayed path, let go after the punch
            punched = a.best_connection(b.peer_id).conn
            assert client.dials == 1
            for cycle in range(3):  # the application sees a failure; the path answers pings
                assert connector.suspect(b.peer_id)
                if cycle == 0:  # a circuit beside the doubtful path, closed once confirmed
                    beside = await connector.wait_connected(b.peer_id, 10, other_than=punched)
                    assert beside is not None and beside.kind == "relayed"
                    await wait_closed(beside.conn)
                else:  # within the interval: the health check alone (a circuit each before)
                    assert await puncher.wait_settled(punched)
                assert [c.kind for c in a.connections(b.peer_id)] == ["punched"]
            assert client.dials == 2


class Events:
    """An event sink whose events can be waited for."""

    def __init__(self) -> None:
        self.events: list[MeshEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: MeshEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def count(self, kind: type[MeshEvent], n: int) -> None:
        """Return once `n` events of `kind` have been seen."""
        while sum(isinstance(e, kind) for e in self.events) < n:
            self._changed = trio.Event()
            await self._changed.wait()


def silence(conn: INetConn) -> None:
    """The binding under a punched QUIC path dies (a flushed NAT): nothing it receives gets
    through any more; other connections on the same socket are untouched."""
    muxed = conn.muxed_conn
    assert isinstance(muxed, QuicConn)
    muxed.receive = lambda datagrams, addr, now: None  # type: ignore[method-assign]


async def test_a_punched_path_whose_binding_dies_falls_back_to_the_relay_and_back() -> None:
    events = Events()
    quick = HealthConfig(interval=1.0, probe_interval=0.5)  # found dead in about 2-4 s
    never = HealthConfig(interval=3600.0)  # the far end does not find out in this test
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            client = CountingRelayClient()
            a, b, connector = await _relayed_pair(
                stack, ConnectConfig(), relay_client=client,
                puncher=HolePuncher(PunchConfig(health=quick), events=events), events=events,
                b_punch=PunchConfig(health=never))
            await connector.connect(PeerInfo(b.peer_id, []))
            await events.count(PathUpgraded, 1)
            old = a.best_connection(b.peer_id).conn
            assert a.best_connection(b.peer_id).kind == "punched"
            far = next(c.conn for c in b.connections(a.peer_id) if c.kind == "punched")
            for end in (old, far):
                silence(end)
            await events.count(PathLost, 1)  # the health check found it dead and retired it
            await events.count(PathUpgraded, 2)  # over a new circuit, punched again
            assert client.dials == 2 and old.is_closed
            # at the first try, though the far end still holds its dead end of the old path:
            # that is not taken for the new one (it was: the far end's punch ended at once,
            # it stopped answering probes, and every re-punch failed)
            after = events.events[[type(e) for e in events.events].index(PathLost):]
            assert not [e for e in after if isinstance(e, PunchAbandoned)], after
            assert not far.is_closed
            new = a.best_connection(b.peer_id)
            assert new.kind == "punched" and new.conn is not old
            assert await echo(a, PeerInfo(b.peer_id, []), b"again") == b"again"
            lost = next(e for e in events.events if isinstance(e, PathLost))
            assert "pings failed" in lost.reason
            # the circuit that stood meanwhile is let go once idle
            relayed = [c.conn for c in a.connections(b.peer_id) if c.kind == "relayed"]
            for conn in relayed:
                await wait_closed(conn)


async def test_a_stream_open_on_the_relay_finishes_there_after_the_upgrade() -> None:
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            a, b, connector = await _relayed_pair(stack, ConnectConfig())
            relayed = (await connector.connect(PeerInfo(b.peer_id, []))).connection
            old = await open_stream_on(a.host, relayed, ECHO_PROTOCOL, 5)
            assert await connector.wait_direct(b.peer_id, 10)
            new = await a.open_stream(PeerInfo(b.peer_id, []), ECHO_PROTOCOL)
            assert not is_relayed(new) and not relayed.is_closed  # new streams: direct
            assert [c.kind for c in a.connections(b.peer_id)] == ["punched", "relayed"]
            assert a.best_connection(b.peer_id).conn is not relayed
            await reset_quietly(new)
            await old.write(b"still relayed")
            assert await old.read(100) == b"still relayed"
            await old.close()
            await wait_closed(relayed)  # closed once its last stream is done


async def test_a_punched_path_that_carries_nothing_leaves_the_relayed_path_standing() -> None:
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            once = ConnectConfig(repunch=RepunchConfig(attempts=1))
            a, b, connector = await _relayed_pair(stack, once)
            b.host.remove_stream_handler(PING_PROTOCOL)  # a punched path would answer nothing
            relayed = (await connector.connect(PeerInfo(b.peer_id, []))).connection
            assert not await connector.wait_direct(b.peer_id, 20)
            assert not relayed.is_closed and connector.last_punch(b.peer_id) is None
            assert [c.kind for c in a.connections(b.peer_id)] == ["relayed"]
            assert await echo(a, PeerInfo(b.peer_id, []), b"hi") == b"hi"


async def test_a_relayed_stream_outliving_the_drain_timeout_is_cut() -> None:
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            a, b, connector = await _relayed_pair(stack, ConnectConfig(relay_drain_timeout=0.5))
            relayed = (await connector.connect(PeerInfo(b.peer_id, []))).connection
            await open_stream_on(a.host, relayed, ECHO_PROTOCOL, 5)  # never finished
            assert await connector.wait_direct(b.peer_id, 10)
            await wait_closed(relayed)
            assert await echo(a, PeerInfo(b.peer_id, []), b"hi") == b"hi"


async def test_a_peer_with_direct_addresses_is_dialled_directly() -> None:
    async with nodes(2) as (a, b):
        connector = await a.mount(Connector())
        with trio.fail_after(10):
            path = await connector.connect(b.peer_info())
        assert path.kind == "direct" and path.remote is not None
        assert await connector.wait_direct(b.peer_id, 0.01) is False  # nothing to upgrade


async def test_no_rung_of_the_ladder_reaches_the_peer() -> None:
    async with nodes(2) as (a, b):
        connector = await a.mount(Connector())
        with trio.fail_after(10), pytest.raises(PeerUnavailable, match="no path"):
            await connector.connect(PeerInfo(b.peer_id, []))
        with pytest.raises(ConfigError):
            Connector(relays=[b.peer_info()])  # relays without a RelayClient


async def test_a_peer_is_reached_through_the_relays_given_for_one_call() -> None:
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            relay, a, b = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(3)]
            await relay.mount(RelayService())
            await (await b.mount(RelayClient())).reserve(relay.peer_info())
            connector = await a.mount(Connector(relay_client=await a.mount(RelayClient())))
            with pytest.raises(PeerUnavailable, match=f"via {b.peer_id}"):
                await connector.connect_via(b.peer_id, [b.peer_info()])  # b is no relay
            path = await connector.connect_via(b.peer_id, [b.peer_info(), relay.peer_info()])
            assert path.kind == "relayed" and path.attempts[-1] == f"relayed via {relay.peer_id}"
            with pytest.raises(PeerUnavailable, match="no relay"):
                await connector.connect_via(b.peer_id, [])


async def test_wait_connected_returns_once_any_connection_to_the_peer_opens() -> None:
    async with nodes(2) as (a, b):
        connector = await a.mount(Connector())
        with trio.fail_after(10):
            assert not await connector.wait_connected(b.peer_id, 0.05)  # none comes
            assert not connector.suspect(b.peer_id)  # no relay: no path is being made
            outcome: list[bool] = []
            async with trio.open_nursery() as nursery:

                async def wait() -> None:
                    outcome.append(await connector.wait_connected(b.peer_id, 10) is not None)

                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                await a.connect(b.peer_info())
            assert outcome == [True]
            assert await connector.wait_connected(b.peer_id, 0.0) is not None  # open already


async def test_a_connection_told_go_away_is_never_handed_out_the_peer_is_dialled_again() -> None:
    """Issue 15: the peer's GO_AWAY arrived (its reader has handled the frame), but the swarm
    still lists the connection until its accept loop runs and closes it. connect() used to
    return it, and the first stream failed ("yamux: connection closed")."""
    async with nodes(2) as (a, b):
        await b.mount(EchoService())
        connector = await a.mount(Connector())
        tcp = PeerInfo(b.peer_id, [addr for addr in b.addrs if "/tcp/" in str(addr)])
        with trio.fail_after(10):
            first = await connector.connect(tcp)
            muxed = first.connection.muxed_conn
            assert isinstance(muxed, Yamux)
            muxed._going_away_remote()  # what the reader does with a GO_AWAY frame
            assert first.connection in a.host.get_network().get_connections(b.peer_id)
            assert a.connections(b.peer_id) == []  # listed, but it takes no stream
            again = await connector.connect(tcp)
            assert again.connection is not first.connection
            assert await echo(a, PeerInfo(b.peer_id, []), b"live", connection=again.connection
                              ) == b"live"
            with pytest.raises(PeerUnavailable, match="connection closed"):
                await echo(a, PeerInfo(b.peer_id, []), b"dead", connection=first.connection)


async def test_more_connections_to_a_peer_never_close_one_connect_handed_out() -> None:
    """Issue 15: py-libp2p's swarm closed a peer's least used connection beyond 3 once it was
    20 s old, so the one connect() had just returned (no stream on it yet) was closed when the
    peer's dial-back or a QUIC connection arrived, and the first stream failed."""
    async with nodes(2) as (a, b):
        await b.mount(EchoService())
        connector = await a.mount(Connector())
        tcp = [addr for addr in b.addrs if "/tcp/" in str(addr)]
        with trio.fail_after(10):
            handed_out = (await connector.connect(PeerInfo(b.peer_id, tcp))).connection
            handed_out._created_at -= 3600  # type: ignore[attr-defined]  # past any grace
            for _ in range(3):  # the peer's dial-back, QUIC, another dial: 4 in all
                await dial_once(a.host.get_network(), tcp[0], b.peer_id)
            assert len(a.host.get_network().get_connections(b.peer_id)) == 4
            await trio.testing.wait_all_tasks_blocked()  # a close would have run by now
            assert not handed_out.is_closed
            assert await echo(a, PeerInfo(b.peer_id, []), b"still", connection=handed_out
                              ) == b"still"
