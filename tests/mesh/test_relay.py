"""Circuit relay v2 on loopback: reserve, dial a circuit, talk through it, and the limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import trio
import trio.testing
from libp2p.abc import INetConn
from libp2p.peer.id import ID

from meshnat import EchoService
from meshnat._libp2p import PeerInfo, read_frame, write_frame
from meshnat._libp2p.connections import has_open_connection, watch_disconnections
from meshnat.echo import echo
from meshnat.errors import ConfigError, NotMounted, PeerUnavailable, RelayUnavailable
from meshnat.node import MeshNode
from meshnat.reflection import REFLECT_PROTOCOL, ReflectionService
from meshnat.reflection.messages import ObserveRequest
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.wire import decode, encode, new_txid
from meshnat.wire.error_response import ErrorCode, ErrorResponse
from tests.support.fake_reflectors import LOOPBACK, nodes


async def test_a_peer_reached_only_through_a_relay_answers_over_the_circuit() -> None:
    async with nodes(3) as (relay, listener, dialer):
        await relay.mount(RelayService())
        listener_client = await listener.mount(RelayClient())
        dialer_client = await dialer.mount(RelayClient())
        await listener.mount(EchoService())
        await listener.mount(ReflectionService())
        with trio.fail_after(15):
            circuit = await listener_client.reserve(relay.peer_info())
            assert str(circuit).endswith(f"/p2p-circuit/p2p/{listener.peer_id}")
            await dialer_client.dial(relay.peer_info(), listener.peer_id)
            target = PeerInfo(listener.peer_id, [circuit])
            assert await echo(dialer, target, b"through the relay") == b"through the relay"
            # over a relay there is no transport address to reflect: an explicit refusal
            stream = await dialer.open_stream(target, REFLECT_PROTOCOL)
            await write_frame(stream, encode(ObserveRequest(new_txid())))
            refusal = decode(await read_frame(stream), ErrorResponse)
        assert refusal.code is ErrorCode.NO_OBSERVED_ADDRESS


async def test_a_circuit_to_a_peer_without_reservation_fails_clearly() -> None:
    async with nodes(3) as (relay, stranger, dialer):
        await relay.mount(RelayService())
        await stranger.mount(RelayClient())
        client = await dialer.mount(RelayClient())
        with trio.fail_after(15), pytest.raises((RelayUnavailable, PeerUnavailable)):
            await client.dial(relay.peer_info(), stranger.peer_id)


async def test_reserving_on_a_node_that_is_no_relay_fails_clearly() -> None:
    async with nodes(2) as (plain, client_node):
        client = await client_node.mount(RelayClient())
        with trio.fail_after(15), pytest.raises(PeerUnavailable):
            await client.reserve(plain.peer_info())


async def test_relay_client_must_be_mounted_and_relay_config_is_checked() -> None:
    with pytest.raises(NotMounted):
        await RelayClient().reserve(PeerInfo(None, []))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RelayServiceConfig(max_circuits=0)


async def test_a_full_relay_refuses_further_reservations_clearly() -> None:
    async with nodes(3) as (relay, first, second):
        await relay.mount(RelayService(RelayServiceConfig(max_reservations=1)))
        one, two = await first.mount(RelayClient()), await second.mount(RelayClient())
        with trio.fail_after(15):
            await one.reserve(relay.peer_info())
            with pytest.raises(RelayUnavailable, match="refused"):
                await two.reserve(relay.peer_info())


async def test_a_circuit_over_its_byte_limit_is_cut_and_the_caller_is_told() -> None:
    async with nodes(3) as (relay, listener, dialer):
        await relay.mount(RelayService(RelayServiceConfig(circuit_bytes=32 * 1024)))
        listener_client, dialer_client = await listener.mount(RelayClient()), \
            await dialer.mount(RelayClient())
        await listener.mount(EchoService())
        with trio.fail_after(15):
            circuit = await listener_client.reserve(relay.peer_info())
            await dialer_client.dial(relay.peer_info(), listener.peer_id)
            target = PeerInfo(listener.peer_id, [circuit])
            assert await echo(dialer, target, b"small") == b"small"
            with pytest.raises(PeerUnavailable):
                for _ in range(8):  # 8 x 16 KiB > 32 KiB: the relay must cut the circuit
                    await echo(dialer, target, bytes(16 * 1024), timeout=5)


async def test_reservations_go_to_the_reachable_relays_that_answer() -> None:
    async with nodes(4) as (good, also_good, not_a_relay, client_node):
        await good.mount(RelayService())
        await also_good.mount(RelayService())
        client = await client_node.mount(RelayClient(timeout=5))
        relays = [not_a_relay.peer_info(), good.peer_info(), also_good.peer_info()]
        with trio.fail_after(30):
            addrs = await client.reserve_best(relays, count=2)
        used = {str(a).split("/p2p/")[1].split("/")[0] for a in addrs}
        assert used == {str(good.peer_id), str(also_good.peer_id)}
        with trio.fail_after(30), pytest.raises(RelayUnavailable):
            await client.reserve_best([not_a_relay.peer_info()])


@contextmanager
def last_connection_gone(relay: MeshNode, peer: ID) -> Iterator[trio.Event]:
    """While inside: an event set once `relay` holds no connection to `peer` left (set from a
    notifee: the relay's own disconnection handler may not have run yet)."""
    gone = trio.Event()

    def dropped(conn: INetConn) -> None:
        if conn.muxed_conn.peer_id == peer and not has_open_connection(relay.host, peer):
            gone.set()

    with watch_disconnections(relay.host, dropped):
        yield gone


async def test_a_reservation_is_freed_as_soon_as_its_peer_has_no_connection_left() -> None:
    """The relay freed a reservation only when its hour ran out: fresh ids could reserve,
    leave and hold their network's share (here: 1) for that hour."""
    config = RelayServiceConfig(max_reservations_per_network=1)
    async with nodes(2) as (relay, second):
        service = await relay.mount(RelayService(config))
        late = await second.mount(RelayClient())
        with trio.fail_after(15):
            with ExitStack() as watching:
                async with MeshNode(LOOPBACK) as first:
                    await (await first.mount(RelayClient())).reserve(relay.peer_info())
                    with pytest.raises(RelayUnavailable, match="refused"):
                        await late.reserve(relay.peer_info())
                    gone = watching.enter_context(last_connection_gone(relay, first.peer_id))
                await gone.wait()
                await trio.testing.wait_all_tasks_blocked()  # the relay's handler ran too
            assert service.statistics().reservations == 0  # first is gone, its slot freed
            circuit = await late.reserve(relay.peer_info())
        assert str(circuit).endswith(f"/p2p-circuit/p2p/{second.peer_id}")
        assert service.statistics().reservations == 1


async def test_a_reservation_stays_while_its_peer_holds_another_connection() -> None:
    config = RelayServiceConfig(max_reservations_per_network=1)
    async with nodes(2) as (relay, first):
        service = await relay.mount(RelayService(config))
        with trio.fail_after(15):
            client = await first.mount(RelayClient())
            await client.reserve(relay.peer_info())
            await first.unmount(client)  # it would reserve again 1 s after a connection dies
            (reserved,) = first.host.get_network().get_connections(relay.peer_id)
            await first.host.get_network().dial_addr(relay.peer_info().addrs[0], relay.peer_id)
            assert len(first.host.get_network().get_connections(relay.peer_id)) == 2
            gone = trio.Event()
            with watch_disconnections(relay.host, lambda _: gone.set()):
                await reserved.close()
                await gone.wait()
                await trio.testing.wait_all_tasks_blocked()  # the relay's handler ran too
            assert service.statistics().reservations == 1  # the other connection holds it
            with last_connection_gone(relay, first.peer_id) as all_gone:
                for conn in first.host.get_network().get_connections(relay.peer_id):
                    await conn.close()
                await all_gone.wait()
                await trio.testing.wait_all_tasks_blocked()
        assert service.statistics().reservations == 0  # the last one closed: freed
