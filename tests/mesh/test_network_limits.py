"""Shared resources bounded per peer id AND per source network, on loopback.

127.0.0.0/8 is all loopback, so nodes listening on 127.0.<n>.1 (and dialling from there) are
peers on different /24 networks; nodes on 127.0.0.1 share one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial

import pytest
import trio
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, PeerId, Status
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from meshnat import EchoService, MeshNode, NodeConfig
from meshnat._libp2p import INetStream, TProtocol, streams
from meshnat._libp2p.relay import HOP_PROTOCOL
from meshnat.echo import ECHO_PROTOCOL, echo
from meshnat.errors import MeshNatError, PeerRefused, PeerUnavailable, RelayUnavailable
from meshnat.records import RecordAuthority, RecordConfig
from meshnat.reflection import REFLECT_PROTOCOL, ReflectionService
from meshnat.reflection.client import observe_over_stream
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.rendezvous import (
    RENDEZVOUS_PROTOCOL,
    RendezvousClient,
    RendezvousConfig,
    RendezvousService,
)
from meshnat.tunnel import ANY_PEER, TunnelConfig, TunnelService
from tests.support.fake_reflectors import LOOPBACK

OTHER_NETWORK = NodeConfig(listen_ip="127.0.9.1")
"""A node on 127.0.9.0/24: another network than the nodes on 127.0.0.1."""


async def connect_from_own_ip(node: MeshNode, target: MeshNode) -> None:
    """Connect `node` to `target` from `node`'s listen IP (the kernel would pick 127.0.0.1)."""
    addr = target.peer_info().addrs[0]
    await node.host.get_network().dial_addr(addr, target.peer_id, (node.config.listen_ip, 0))


async def silent_streams(node: MeshNode, target: MeshNode, protocol: TProtocol,
                         count: int) -> list[INetStream]:
    """Open `count` streams to `target` that never send a byte (the caller holds them)."""
    streams = []
    for _ in range(count):
        with contextlib.suppress(MeshNatError):  # refused while negotiating: fine
            streams.append(await node.open_stream(target.peer_info(), protocol))
    return streams


async def wait_for(predicate: Callable[[], bool], *, limit: float = 10.0) -> None:
    """Poll `predicate()` until true: at most `limit` seconds, 100 checks a second."""
    with trio.fail_after(limit):
        for _ in range(int(limit * 100)):
            if predicate():
                return
            await trio.sleep(0.01)
        raise AssertionError("condition never held")


async def test_silent_reflect_streams_of_one_peer_or_network_leave_others_answered() -> None:
    async with AsyncExitStack() as stack:
        reflector = await stack.enter_async_context(MeshNode(LOOPBACK))
        flooders = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(8)]
        honest = await stack.enter_async_context(MeshNode(NodeConfig(listen_ip="127.0.9.1")))
        service = await reflector.mount(ReflectionService())
        silent: list[INetStream] = []
        with trio.fail_after(30):
            for flooder in flooders:  # 8 ids x 8 streams = 64, the reflector's total
                silent.extend(await silent_streams(flooder, reflector, REFLECT_PROTOCOL, 8))
            # 4 per peer and 16 for their network are held; the other 48 were refused
            await wait_for(lambda: service.statistics().streams_refused >= 48)
            answer = await observe_over_stream(honest, reflector.peer_info(), timeout=5)
        assert str(answer.observed.ip) == "127.0.9.1"
        assert service.statistics().streams_refused >= 48


async def serve_target(nursery: trio.Nursery) -> int:
    """A TCP service on 127.0.0.1 that accepts and holds connections; returns its port."""
    async def hold(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, hold, 0)
    return int(listeners[0].socket.getsockname()[1])


async def test_peers_not_in_the_allow_list_take_no_tunnel_slot() -> None:
    config = TunnelConfig(max_tunnels=16, max_tunnels_per_peer=4)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        nursery_scope = nursery.cancel_scope
        stack.callback(nursery_scope.cancel)
        exposer = await stack.enter_async_context(MeshNode(LOOPBACK))
        strangers = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(4)]
        allowed = await stack.enter_async_context(MeshNode(LOOPBACK))
        service = await exposer.mount(TunnelService(config))
        service.expose("web", ("127.0.0.1", await serve_target(nursery)),
                       allow={allowed.peer_id})
        client = await allowed.mount(TunnelService(config))
        held: list[INetStream] = []
        with trio.fail_after(30):
            for stranger in strangers:  # 4 x 4 silent streams: every slot, before the fix
                held.extend(await silent_streams(stranger, exposer, TunnelService.protocol_id, 4))
            await wait_for(lambda: service.statistics().active + service.statistics().refused
                           >= 16)
            tunnel = await client.open(exposer.peer_info(), "web")
            await tunnel.aclose()
        assert service.statistics().authorized == 1


async def test_many_identities_on_one_network_leave_tunnel_slots_for_another() -> None:
    config = TunnelConfig(max_tunnels=16, max_tunnels_per_peer=4, max_tunnels_per_network=8)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        nursery_scope = nursery.cancel_scope
        stack.callback(nursery_scope.cancel)
        exposer = await stack.enter_async_context(MeshNode(LOOPBACK))
        fresh = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(4)]
        honest = await stack.enter_async_context(MeshNode(OTHER_NETWORK))
        service = await exposer.mount(TunnelService(config))
        service.expose("open", ("127.0.0.1", await serve_target(nursery)), allow=ANY_PEER)
        client = await honest.mount(TunnelService(config))
        held: list[INetStream] = []
        with trio.fail_after(30):
            for node in fresh:  # 4 ids x 4 silent streams from 127.0.0.0/24
                held.extend(await silent_streams(node, exposer, TunnelService.protocol_id, 4))
            await wait_for(lambda: service.statistics().active + service.statistics().refused
                           >= 16)
            await connect_from_own_ip(honest, exposer)
            tunnel = await client.open(exposer.peer_info(), "open")
            await tunnel.aclose()
        assert service.statistics().authorized == 1


async def test_one_network_cannot_take_every_relay_reservation() -> None:
    config = RelayServiceConfig(max_reservations=4, max_reservations_per_network=2)
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(MeshNode(LOOPBACK))
        flooders = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(4)]
        newcomer = await stack.enter_async_context(MeshNode(OTHER_NETWORK))
        service = await relay.mount(RelayService(config))
        outcomes = []
        with trio.fail_after(30):
            for flooder in flooders:  # 4 fresh ids from 127.0.0.0/24
                client = await flooder.mount(RelayClient())
                try:
                    await client.reserve(relay.peer_info())
                    outcomes.append("reserved")
                except RelayUnavailable:
                    outcomes.append("refused")
            await connect_from_own_ip(newcomer, relay)
            circuit = await (await newcomer.mount(RelayClient())).reserve(relay.peer_info())
        assert outcomes == ["reserved", "reserved", "refused", "refused"]
        assert str(circuit).endswith(f"/p2p-circuit/p2p/{newcomer.peer_id}")
        stats = service.statistics()
        assert stats.reservations == 3 and stats.reservations_refused == {"network": 2}


async def test_one_network_cannot_take_every_circuit_to_a_peer() -> None:
    config = RelayServiceConfig(max_circuits=4, max_circuits_per_network=2)
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(MeshNode(LOOPBACK))
        listener = await stack.enter_async_context(MeshNode(LOOPBACK))
        flooders = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(4)]
        honest = await stack.enter_async_context(MeshNode(OTHER_NETWORK))
        service = await relay.mount(RelayService(config))
        await (await listener.mount(RelayClient())).reserve(relay.peer_info())
        outcomes = []
        with trio.fail_after(60):
            for flooder in flooders:  # 4 fresh ids from 127.0.0.0/24, circuits held open
                client = await flooder.mount(RelayClient())
                try:
                    await client.dial(relay.peer_info(), listener.peer_id)
                    outcomes.append("circuit")
                except (RelayUnavailable, PeerUnavailable):
                    outcomes.append("refused")
            await connect_from_own_ip(honest, relay)
            await (await honest.mount(RelayClient())).dial(relay.peer_info(), listener.peer_id)
        assert outcomes == ["circuit", "circuit", "refused", "refused"]
        assert service.statistics().circuits == 3


async def stream_ends(stream: INetStream, *, trickle: bool) -> None:
    """Read `stream` until the relay ends it; with `trickle`, send a slow message meanwhile
    (a length prefix of 100, then a byte every 50 ms: at most 100 bytes)."""
    async def drip() -> None:
        with contextlib.suppress(Exception):  # a write may see the relay's reset first
            await stream.write(b"\x64")
            for _ in range(100):
                await trio.sleep(0.05)
                await stream.write(b"\x00")

    async with trio.open_nursery() as nursery:
        if trickle:
            nursery.start_soon(drip)
        with contextlib.suppress(Exception):  # StreamReset / StreamEOF: the relay ended it
            for _ in range(100):
                await stream.read(1024)
        nursery.cancel_scope.cancel()


async def test_the_relay_hop_ends_silent_and_slow_streams() -> None:
    config = RelayServiceConfig(hop_read_timeout=0.5, hop_stream_timeout=1.0)
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(MeshNode(LOOPBACK))
        client = await stack.enter_async_context(MeshNode(LOOPBACK))
        await relay.mount(RelayService(config))
        with trio.fail_after(10):  # py-libp2p's own hop waits 30 s per message, then loops
            silent = await client.open_stream(relay.peer_info(), HOP_PROTOCOL)
            slow = await client.open_stream(relay.peer_info(), HOP_PROTOCOL)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(stream_ends, silent, trickle=False))
                nursery.start_soon(partial(stream_ends, slow, trickle=True))


async def test_a_reservation_is_for_the_connection_peer_whatever_the_message_names() -> None:
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(MeshNode(LOOPBACK))
        reserver = await stack.enter_async_context(MeshNode(LOOPBACK))
        victim = await stack.enter_async_context(MeshNode(LOOPBACK))
        dialer = await stack.enter_async_context(MeshNode(LOOPBACK))
        await relay.mount(RelayService())
        await reserver.mount(RelayClient())
        dialer_client = await dialer.mount(RelayClient())
        with trio.fail_after(30):
            stream = await reserver.open_stream(relay.peer_info(), HOP_PROTOCOL)
            forged = HopMessage(type=HopMessage.RESERVE, peer=PeerId(id=victim.peer_id.to_bytes()))
            await write_delimited_msg(stream, forged)
            answer = await read_delimited_msg(stream, HopMessage)
            assert answer.status == Status.OK
            # the relay reserved for `reserver` (whose connection it was), not for the victim
            await dialer_client.dial(relay.peer_info(), reserver.peer_id)
            with pytest.raises((RelayUnavailable, PeerUnavailable)):
                await dialer_client.dial(relay.peer_info(), victim.peer_id)


async def test_one_peers_silent_rendezvous_streams_leave_room_for_another_peer() -> None:
    async with AsyncExitStack() as stack:
        point = await stack.enter_async_context(MeshNode(LOOPBACK))
        attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
        honest = await stack.enter_async_context(MeshNode(LOOPBACK))
        service = await point.mount(RendezvousService())
        client = await honest.mount(RendezvousClient(await honest.mount(
            RecordAuthority(RecordConfig(name="net", publish_local=True)))))
        with trio.fail_after(30):
            held = await silent_streams(attacker, point, RENDEZVOUS_PROTOCOL, 64)
            await wait_for(lambda: service.statistics().streams_refused >= 60)
            assert await client.register(point.peer_info(), "net") > 0
        assert service.statistics().streams_held == 4 and len(held) >= 4


async def test_fresh_identities_of_one_network_fill_only_their_share_of_a_namespace() -> None:
    async with AsyncExitStack() as stack:
        point = await stack.enter_async_context(MeshNode(LOOPBACK))
        await point.mount(RendezvousService(RendezvousConfig(max_per_namespace_per_network=2)))
        nodes = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(3)]
        outsider = await stack.enter_async_context(MeshNode(OTHER_NETWORK))
        clients = []
        for node in [*nodes, outsider]:
            authority = await node.mount(RecordAuthority(RecordConfig(name="net",
                                                                      publish_local=True)))
            clients.append(await node.mount(RendezvousClient(authority)))
        with trio.fail_after(30):
            await connect_from_own_ip(outsider, point)
            for client in clients[:2]:  # two ids of 127.0.0.0/24: its share
                await client.register(point.peer_info(), "net")
            with pytest.raises(PeerRefused) as refused:
                await clients[2].register(point.peer_info(), "net")
            await clients[3].register(point.peer_info(), "net")  # 127.0.9.0/24
        assert refused.value.code == "rate-limited" and "network" in refused.value.reason


async def test_fresh_identities_of_one_network_cannot_fill_the_connection_table() -> None:
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(MeshNode(
            NodeConfig(listen_ip="127.0.0.1", max_connections=8, max_connections_per_network=4)))
        await target.mount(ReflectionService())
        flooders = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(10)]
        honest = await stack.enter_async_context(MeshNode(OTHER_NETWORK))
        with trio.fail_after(60):
            accepted = 0
            for flooder in flooders:  # 10 fresh ids from 127.0.0.0/24
                try:
                    await flooder.open_stream(target.peer_info(), REFLECT_PROTOCOL, timeout=5)
                except MeshNatError:
                    continue
                accepted += 1
            await connect_from_own_ip(honest, target)
            answer = await observe_over_stream(honest, target.peer_info(), timeout=5)
        assert accepted == 4
        assert str(answer.observed.ip) == "127.0.9.1"


async def test_connections_that_came_and_went_leave_the_inbound_slots_free() -> None:
    """py-libp2p's swarm kept each inbound connection's handler (and its inbound slot) until
    the node stopped: with room for 4, the 5th connection ever was refused."""
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(MeshNode(
            NodeConfig(listen_ip="127.0.0.1", max_connections=4)))
        await target.mount(EchoService())
        staying = await stack.enter_async_context(MeshNode(OTHER_NETWORK))
        with trio.fail_after(90):
            await connect_from_own_ip(staying, target)
            for _ in range(8):  # 8 connections open and close, one after the other
                async with MeshNode(LOOPBACK) as visitor:
                    assert await echo(visitor, target.peer_info(), b"hi", timeout=5) == b"hi"
            assert await echo(staying, target.peer_info(), b"still", timeout=5) == b"still"


async def test_every_handler_bounds_the_streams_one_peer_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "HANDLER_STREAMS", 4)
    monkeypatch.setattr(streams, "HANDLER_STREAMS_PER_PEER", 2)
    monkeypatch.setattr(streams, "HANDLER_STREAMS_PER_NETWORK", 4)
    before = streams.handler_refusals["echo"]
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(MeshNode(LOOPBACK))
        attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
        honest = await stack.enter_async_context(MeshNode(LOOPBACK))
        await server.mount(EchoService())
        with trio.fail_after(30):
            held = await silent_streams(attacker, server, ECHO_PROTOCOL, 4)
            await wait_for(lambda: streams.handler_refusals["echo"] - before >= 2)
            assert await echo(honest, server.peer_info(), b"still served") == b"still served"
        assert len(held) >= 2
        assert streams.handler_refusals["echo"] - before == 2
