"""HolePuncher on loopback: coordinate over a relay circuit, open a direct path, drop the relay."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing
from libp2p.host.ping import ID as PING_PROTOCOL

from meshnat import EchoService, MeshNode
from meshnat._libp2p import (
    PeerInfo,
    close_connections,
    is_relayed,
    wait_closed,
    wait_direct_connection,
)
from meshnat.echo import ECHO_PROTOCOL
from meshnat.endpoint import Endpoint
from meshnat.errors import NotMounted, PunchFailed
from meshnat.events import EventSink, MeshEvent, PathLost, PunchSucceeded, ignore_events
from meshnat.punch import HolePuncher, PunchConfig
from meshnat.punch.birthday import HardSideSession, SendFrom
from meshnat.punch.health import HealthConfig
from meshnat.punch.messages import MappingHint, Probe
from meshnat.relay import RelayClient, RelayService
from meshnat.traversal.carrier import SharedPort
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


async def test_a_punched_path_that_stops_answering_pings_is_retired_and_closed() -> None:
    events: list[MeshEvent] = []
    fast = PunchConfig(health=HealthConfig(interval=0.05, probe_interval=0.05, dead_after=3))
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            _, a, b, puncher = await relayed_pair(stack, fast, a_events=events.append)
            first = await puncher.punch(b.peer_id)
            assert puncher.punched(b.peer_id) is first
            b.host.remove_stream_handler(PING_PROTOCOL)  # the far end no longer answers
            await wait_closed(first.connection)
            assert puncher.punched(b.peer_id) is None
            lost = [e for e in events if isinstance(e, PathLost)]
            assert len(lost) == 1 and "3 pings failed in a row" in lost[0].reason
            paths = puncher.statistics().paths
            assert (paths.paths_lost, paths.kept) == (1, 0)
            left = a.connections(b.peer_id)
            assert [c.kind for c in left] == ["relayed"]  # the relay, untouched, stands


async def test_a_punched_path_closed_by_the_far_end_is_retired_at_once() -> None:
    events: list[MeshEvent] = []
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            _, a, b, puncher = await relayed_pair(stack, a_events=events.append)
            first = await puncher.punch(b.peer_id)
            far = await wait_direct_connection(b.host, a.peer_id)  # may be accepted later
            await far.close()
            await wait_closed(first.connection)
            await trio.testing.wait_all_tasks_blocked()  # the keeper's task sees it closed
            assert puncher.punched(b.peer_id) is None
            assert [type(e) for e in events] == [PunchSucceeded, PathLost]
            assert "closed" in events[-1].reason  # type: ignore[attr-defined]


async def test_a_peer_asking_for_too_many_punches_is_refused() -> None:
    stingy = PunchConfig(responder_rate=0.001, responder_burst=1)
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            _, _, b, puncher = await relayed_pair(stack, b_config=stingy)
            await puncher.punch(b.peer_id)
            with pytest.raises(PunchFailed, match="rate_limited"):
                await puncher.punch(b.peer_id)


async def test_birthday_probing_succeeds_when_nothing_of_the_hard_side_but_its_dial_arrives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The easy side (here the initiator) waits for the hard side's connection, not for its
    answer: a probe that landed opened the way for that connection, so the hard side's probes
    and answers lost on the way (here it sends none: a port-restricted easy NAT drops its
    probes, and both copies of its answer are lost) must not fail the punch. Before, the easy
    side gave up after `punch_timeout` with the connection there."""
    hears = HardSideSession.receive_probe

    def hears_silently(self: HardSideSession, socket: int, probe: Probe, src: Endpoint,
                       now: float) -> None:
        hears(self, socket, probe, src, now)
        kept = [a for a in self._actions if not isinstance(a, SendFrom)]  # no answers
        self._actions.clear()
        self._actions.extend(kept)

    monkeypatch.setattr(HardSideSession, "_tick", lambda self, now: None)
    monkeypatch.setattr(HardSideSession, "receive_probe", hears_silently)
    easy = PunchConfig(mapping=MappingHint.ENDPOINT_INDEPENDENT)
    hard = PunchConfig(mapping=MappingHint.ENDPOINT_DEPENDENT)
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            _, _, b, puncher = await relayed_pair(stack, easy, hard)
            result = await puncher.punch(b.peer_id)
            assert result.transport == "udp" and not is_relayed(result.connection)
            assert result.remote is not None and result.remote.port not in [
                e.port for e in b.local_endpoints("udp")]  # one of the hard side's sockets


async def test_an_early_dial_that_connects_is_the_path_when_no_probe_of_the_peer_arrives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe the responder sends toward the initiator is lost, but its QUIC listener
    answered the initiator's early Initial: that connection is the UDP path. Before, the
    initiator waited for a probe only, so its UDP path failed ("no UDP pair answered") while
    the responder had already taken the connection as punched, and TCP, started when UDP
    heard nothing, won here on loopback."""
    easy = PunchConfig(mapping=MappingHint.ENDPOINT_INDEPENDENT)
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            _, a, b, puncher = await relayed_pair(stack, easy, easy)
            deaf = SharedPort.run

            async def run(self: SharedPort, on_probe: Callable[..., None]) -> None:
                if self._node is a:  # the initiator hears no probe at all
                    await trio.sleep_forever()
                await deaf(self, on_probe)

            monkeypatch.setattr(SharedPort, "run", run)
            result = await puncher.punch(b.peer_id)
            assert result.transport == "udp" and not is_relayed(result.connection)
            assert result.remote in b.local_endpoints("udp")
