"""No single datagram ends a service's loop: sources no host can send from (port 0, ...) are
dropped and counted on the node's shared port, on plain sockets and on the probe helper's port."""

from __future__ import annotations

import os
import socket
from collections import Counter
from contextlib import aclosing
from typing import Any

import pytest
import trio

from meshnat import MeshNode
from meshnat._libp2p.quic import QuicListener
from meshnat.classify import ProbeHelperService
from meshnat.datagrams import receive_messages
from meshnat.endpoint import Endpoint
from meshnat.reflection import ReflectionService
from meshnat.reflection.client import observe_over_udp
from meshnat.reflection.messages import REQUEST_PADDING, ObserveRequest, ObserveResponse
from meshnat.wire import decode, encode, frame_datagram, new_txid, unframe_datagram
from tests.support.fake_reflectors import LOOPBACK
from tests.support.rawudp import raw_available, send_forged_udp


def observe_datagram() -> bytes:
    return frame_datagram(encode(ObserveRequest(new_txid(), bytes(REQUEST_PADDING))))


@pytest.fixture
def forge() -> None:
    reason = raw_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the forged-source tests: {reason}")
        pytest.skip(reason)


async def arrive(node: MeshNode, data: bytes, addr: tuple[str, int]) -> None:
    """What the QUIC listener's receive loop does with one datagram from `addr`."""
    listener: Any = node.udp._listener
    if isinstance(listener, QuicListener):  # meshnat's own QUIC asks the tap first
        assert listener.endpoint is not None and listener.endpoint.tap is not None
        listener.endpoint.tap(data, addr)
    else:  # py-libp2p's; an error there costs 10 ms
        await listener._process_packet(data, addr)


async def test_the_shared_port_drops_impossible_sources_before_quic_or_meshnat_sees_them() -> None:
    async with MeshNode(LOOPBACK) as node:
        await node.mount(ReflectionService())
        seen: list[Endpoint] = []
        node.udp.subscribe(lambda data, src: seen.append(src))
        for addr in [("127.0.0.1", 0), ("0.0.0.0", 4001), ("224.0.0.1", 4001),
                     ("255.255.255.255", 4001)]:
            await arrive(node, observe_datagram(), addr)
            await arrive(node, b"\xc0" + bytes(1199), addr)  # a QUIC Initial
        assert node.udp.statistics().impossible_sources == 8 and not seen
        assert node.udp.statistics().dispatched == 0


async def test_a_failing_datagram_handler_is_counted_and_others_still_get_the_datagram() -> None:
    async with MeshNode(LOOPBACK) as node:
        got: list[bytes] = []

        def broken(data: bytes, src: Endpoint) -> None:
            raise RuntimeError("a bug in a subscriber")

        node.udp.subscribe(broken)
        node.udp.subscribe(lambda data, src: got.append(data))
        for _ in range(3):
            await arrive(node, observe_datagram(), ("127.0.0.1", 4001))
        stats = node.udp.statistics()
        assert len(got) == 3 and stats.handler_errors == 3 and stats.dispatched == 3


@pytest.mark.usefixtures("forge")
async def test_forged_port_0_datagrams_on_the_shared_port_leave_reflection_working() -> None:
    async with MeshNode(LOOPBACK) as reflector, MeshNode(LOOPBACK) as client:
        await reflector.mount(ReflectionService())
        port = reflector.listen_endpoint("udp").port
        for _ in range(20):
            send_forged_udp(("127.0.0.1", 0), ("127.0.0.1", port), observe_datagram())
        with trio.fail_after(10):  # the port reads in order: the forged ones came first
            reflection = await observe_over_udp(client, Endpoint.parse(f"127.0.0.1:{port}"),
                                                timeout=8)
        assert reflection.observed == client.local_endpoints("udp")[0]
        assert reflector.udp.statistics().impossible_sources == 20


@pytest.mark.usefixtures("forge")
async def test_a_port_0_datagram_does_not_unmount_the_probe_helper() -> None:
    async with MeshNode(LOOPBACK) as node:
        helper = await node.mount(ProbeHelperService())
        alt = ("127.0.0.1", helper.alt_port)
        send_forged_udp(("127.0.0.1", 0), alt, observe_datagram())
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            me = Endpoint.parse(f"127.0.0.1:{sock.getsockname()[1]}")
            with trio.fail_after(10):  # answered after the forged datagram was read
                await sock.sendto(observe_datagram(), alt)
                data, _ = await sock.recvfrom(2048)
        reply = decode(unframe_datagram(data) or b"", ObserveResponse)
        assert reply.observed == me
        assert helper.impossible_sources == 1


@pytest.mark.usefixtures("forge")
async def test_receive_messages_drops_a_port_0_datagram_and_goes_on() -> None:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        await sock.bind(("127.0.0.1", 0))
        await sender.bind(("127.0.0.1", 0))
        send_forged_udp(("127.0.0.1", 0), sock.getsockname(), observe_datagram())
        await sender.sendto(b"not meshnat", sock.getsockname())
        await sender.sendto(observe_datagram(), sock.getsockname())
        dropped: Counter[str] = Counter()
        messages = receive_messages(sock, ObserveRequest, dropped=dropped)
        with trio.fail_after(10):
            async with aclosing(messages):
                message, src = await anext(messages)
        assert isinstance(message, ObserveRequest)
        assert src == Endpoint.parse(f"127.0.0.1:{sender.getsockname()[1]}")
        assert dropped == Counter({"impossible-source": 1, "not-a-message": 1})
