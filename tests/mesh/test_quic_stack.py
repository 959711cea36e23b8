"""A MeshNode on meshnat's own QUIC transport (`NodeConfig.quic_stack="meshnat"`).

What the node needs from its QUIC port, on the qh3 transport: streams, the datagram tap
(meshnat's UDP messages on the QUIC port), dials from the listen port and from another port
(a punched pair's), ephemeral listeners, and py-libp2p-stack peers on the other end.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from meshnat import EchoService, MeshNode, NodeConfig, _libp2p
from meshnat._libp2p import PeerInfo
from meshnat._libp2p.quic import QuicConn
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError
from meshnat.reflection import ReflectionService
from meshnat.reflection.client import observe_over_udp

OURS = NodeConfig(listen_ip="127.0.0.1", quic_stack="meshnat")
STOCK = NodeConfig(listen_ip="127.0.0.1", quic_stack="py-libp2p")


@asynccontextmanager
async def running(*configs: NodeConfig) -> AsyncIterator[list[MeshNode]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(MeshNode(c)) for c in configs]


def quic_only(node: MeshNode) -> PeerInfo:
    info = node.peer_info()
    return PeerInfo(info.peer_id, [a for a in info.addrs if "/quic-v1" in str(a)])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unknown_quic_stack_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        NodeConfig(quic_stack="quiche")  # type: ignore[arg-type]


@pytest.mark.parametrize("other", [OURS, STOCK], ids=["meshnat", "py-libp2p"])
async def test_echo_over_quic_from_the_listen_port(other: NodeConfig) -> None:
    with trio.fail_after(30):
        async with running(OURS, other) as (a, b):
            await a.mount(EchoService())
            stream = await b.open_stream(quic_only(a), EchoService.protocol_id, timeout=10)
            await stream.write(b"hello")
            assert await stream.read(5) == b"hello"
            await stream.close()
            (conn,) = a.host.get_network().get_connections(b.peer_id)
            assert isinstance(conn.muxed_conn, QuicConn) and _libp2p.transport_of(conn) == "udp"
            if other is OURS:  # the dial left from b's listen port: a saw that port
                assert conn.muxed_conn.remote_address[1] == b.listen_endpoint("udp").port


async def test_the_datagram_tap_answers_reflection_on_the_quic_port() -> None:
    with trio.fail_after(30):
        async with running(OURS, OURS) as (reflector, client):
            await reflector.mount(ReflectionService())
            port = reflector.listen_endpoint("udp").port
            reflection = await observe_over_udp(
                client, Endpoint.parse(f"127.0.0.1:{port}"), timeout=10)
            assert reflection.observed == client.local_endpoints("udp")[0]
            assert reflector.udp.statistics().dispatched >= 1


async def test_dials_from_the_listen_port_and_from_another_port_and_ephemeral_listeners() -> None:
    with trio.fail_after(30):
        async with running(OURS, OURS) as (a, b):
            await b.mount(EchoService())
            remote = b.listen_endpoint("udp")
            source = a.listen_endpoint("udp")
            conn = await _libp2p.dial_quic_from(a.host, b.peer_id, remote, source)
            assert _libp2p.local_port(conn) == source.port
            # a pair's own port, no listener there: a socket of its own for the connection
            pair_port = free_udp_port()
            other = await _libp2p.dial_quic_from(a.host, b.peer_id, remote,
                                                 Endpoint.parse(f"127.0.0.1:{pair_port}"))
            assert _libp2p.local_port(other) == pair_port
            await other.close()
            # an ephemeral listener on a chosen port; a taken port is EADDRINUSE
            ephemeral_port = free_udp_port()
            key = await _libp2p.listen_quic(b.host, remote.ip, ephemeral_port)
            with pytest.raises(OSError) as taken:
                await _libp2p.listen_quic(b.host, remote.ip, remote.port)
            assert taken.value.errno == errno.EADDRINUSE
            third = await _libp2p.dial_quic_from(
                a.host, b.peer_id, Endpoint.parse(f"127.0.0.1:{ephemeral_port}"), source)
            assert _libp2p.local_port(third) == source.port
            await _libp2p.close_listener(b.host, key)
            with trio.fail_after(10):
                await _libp2p.wait_closed(third)
