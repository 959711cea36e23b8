"""Shared resources bounded per peer id AND per source network, on loopback.

127.0.0.0/8 is all loopback, so nodes listening on 127.0.<n>.1 (and dialling from there) are
peers on different /24 networks; nodes on 127.0.0.1 share one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack

import trio

from meshnat import MeshNode, NodeConfig
from meshnat._libp2p import INetStream, TProtocol
from meshnat.errors import MeshNatError
from meshnat.reflection import REFLECT_PROTOCOL, ReflectionService
from meshnat.reflection.client import observe_over_stream
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
