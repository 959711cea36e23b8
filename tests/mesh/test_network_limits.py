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
from meshnat._libp2p import INetStream
from meshnat.errors import MeshNatError
from meshnat.reflection import REFLECT_PROTOCOL, ReflectionService
from meshnat.reflection.client import observe_over_stream
from tests.support.fake_reflectors import LOOPBACK


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
                for _ in range(8):
                    with contextlib.suppress(MeshNatError):  # refused while negotiating: fine
                        silent.append(await flooder.open_stream(reflector.peer_info(),
                                                                REFLECT_PROTOCOL))
            # 4 per peer and 16 for their network are held; the other 48 were refused
            await wait_for(lambda: service.statistics().streams_refused >= 48)
            answer = await observe_over_stream(honest, reflector.peer_info(), timeout=5)
        assert str(answer.observed.ip) == "127.0.9.1"
        assert service.statistics().streams_refused >= 48
