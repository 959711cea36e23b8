"""HolePuncher on loopback: coordinate over a relay circuit, open a direct path, drop the relay."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from meshnat import EchoService, MeshNode
from meshnat._libp2p import PeerInfo, close_connections, is_relayed
from meshnat.echo import ECHO_PROTOCOL
from meshnat.errors import NotMounted, PunchFailed
from meshnat.events import EventSink, MeshEvent, PathLost, PunchSucceeded, ignore_events
from meshnat.punch import HolePuncher, PunchConfig
from meshnat.punch.messages import MappingHint
from meshnat.relay import RelayClient, RelayService
from tests.support.fake_reflectors import LOOPBACK


async def relayed_pair(stack: AsyncExitStack, a_config: PunchConfig | None = None,
                       b_config: PunchConfig | None = None, a_events: EventSink = ignore_events,
                       ) -> tuple[MeshNode, MeshNode, MeshNode, HolePuncher]:
    """A relay, and A connected to B only through it; both run a HolePuncher."""
    relay = await stack.enter_async_context(MeshNode(LOOPBACK))
    a = await stack.enter_async_context(MeshNode(LOOPBACK))
    b = await stack.enter_async_context(MeshNode(LOOPBACK))
    await relay.mount(RelayService())
    a_relay, b_relay = await a.mount(RelayClient()), await b.mount(RelayClient())
    await b_relay.reserve(relay.peer_info())
    await b.mount(EchoService())
    await b.mount(HolePuncher(b_config))
    puncher = await a.mount(HolePuncher(a_config, events=a_events))
    await a_relay.dial(relay.peer_info(), b.peer_id)
    (conn,) = a.host.get_network().get_connections(b.peer_id)
    assert is_relayed(conn)
    return relay, a, b, puncher


async def test_punch_opens_a_direct_connection_that_outlives_the_relay() -> None:
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            relay, a, b, puncher = await relayed_pair(stack)
            result = await puncher.punch(b.peer_id)
            assert not is_relayed(result.connection)
            assert result.transport in ("udp", "tcp") and result.elapsed < 5
            assert result.remote in b.local_endpoints(result.transport)
            await close_connections(relay.host)  # the relay dies: listeners and circuits gone
            assert not a.host.get_network().get_connections(relay.peer_id)
            direct = await a.host.new_stream(b.peer_id, [ECHO_PROTOCOL])
            await direct.write(b"direct")
            assert await direct.read(100) == b"direct"
            assert not is_relayed(direct)


async def test_two_endpoint_dependent_sides_give_up_at_once() -> None:
    hard = PunchConfig(mapping=MappingHint.ENDPOINT_DEPENDENT)
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            _, _, b, puncher = await relayed_pair(stack, hard, hard)
            started = trio.current_time()
            with pytest.raises(PunchFailed, match="endpoint-dependent"):
                await puncher.punch(b.peer_id)
            assert trio.current_time() - started < 1.0


async def test_puncher_must_be_mounted() -> None:
    with pytest.raises(NotMounted):
        await HolePuncher().punch(PeerInfo(None, []).peer_id)  # type: ignore[arg-type]


async def test_a_dead_direct_path_is_noticed_by_keepalives_and_punched_again() -> None:
    events: list[MeshEvent] = []
    repunched = trio.Event()

    def sink(event: MeshEvent) -> None:
        events.append(event)
        if sum(isinstance(e, PunchSucceeded) for e in events) == 2:
            repunched.set()

    fast = PunchConfig(keepalive_interval=0.05, repunch_attempts=1)
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            _, a, b, puncher = await relayed_pair(stack, fast, a_events=sink)
            first = await puncher.punch(b.peer_id)
            await first.connection.close()  # the direct path dies; the relay still works
            await repunched.wait()
            assert [type(e) for e in events] == [PunchSucceeded, PathLost, PunchSucceeded]
            paths = puncher.statistics().paths
            assert (paths.paths_lost, paths.repunches, paths.kept) == (1, 1, 1)
            direct = [c for c in a.host.get_network().get_connections(b.peer_id)
                      if not is_relayed(c)]
            assert direct and first.connection not in direct


async def test_a_peer_asking_for_too_many_punches_is_refused() -> None:
    stingy = PunchConfig(responder_rate=0.001, responder_burst=1)
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            _, _, b, puncher = await relayed_pair(stack, b_config=stingy)
            await puncher.punch(b.peer_id)
            with pytest.raises(PunchFailed, match="rate_limited"):
                await puncher.punch(b.peer_id)
