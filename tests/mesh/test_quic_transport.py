"""meshnat's QUIC transport (qh3) inside py-libp2p hosts, and against py-libp2p's own QUIC.

Identify, ping, echo streams checked by digest, a large transfer, many short streams; py-libp2p's
stock QUIC (aioquic) dialling and dialled by meshnat's transport; forged certificates refused
both ways.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import PingService
from libp2p.identity.identify.identify import ID as IDENTIFY
from libp2p.identity.identify.identify import parse_identify_response
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamError
from libp2p.transport.tcp.tcp import TCP

from meshnat._libp2p import identity, quic_stream
from meshnat._libp2p.host import close_connections
from meshnat._libp2p.quic import QuicConn, QuicEndpoint, QuicTransport
from meshnat._libp2p.quic.tls import configuration, libp2p_certificate
from tests.support.impostor import quic_certificates_claiming
from tests.unit.test_quic_tls import forged

ECHO = TProtocol("/meshnat-test/digest/1.0.0")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]
CHUNK = bytes(range(256)) * 256


def ours() -> IHost:
    pair = create_new_key_pair()
    return new_host(key_pair=pair, sec_opt=identity.secure_transports(pair),
                    transports=[TCP(), QuicTransport(pair)])


def stock() -> IHost:
    """py-libp2p's own QUIC, with meshnat's fixes for its identity check and lost tails."""
    identity.install()
    quic_stream.install()
    pair = create_new_key_pair()
    return new_host(key_pair=pair, sec_opt=identity.secure_transports(pair), enable_quic=True,
                    listen_addrs=LISTEN)


async def digest_handler(stream: INetStream) -> None:
    """Read to the end, answer with the SHA-256 of what arrived and its length."""
    digest, count = hashlib.sha256(), 0
    try:
        while True:
            data = await stream.read(1 << 20)
            digest.update(data)
            count += len(data)
    except StreamEOF:
        pass
    await stream.write(digest.digest() + count.to_bytes(8, "big"))
    await stream.close()


async def send_and_check(dialler: IHost, listener: IHost, size: int) -> None:
    stream = await dialler.new_stream(listener.get_id(), [ECHO])
    digest, sent = hashlib.sha256(), 0
    while sent < size:
        piece = CHUNK[: min(len(CHUNK), size - sent)]
        await stream.write(piece)
        digest.update(piece)
        sent += len(piece)
    await stream.close_write()  # type: ignore[attr-defined]
    answer = b""
    while len(answer) < 40:
        answer += await stream.read(40 - len(answer))
    assert answer == digest.digest() + size.to_bytes(8, "big")
    await stream.close()


@asynccontextmanager
async def running(*hosts: IHost) -> AsyncIterator[None]:
    """Run `hosts` on loopback; close their networks first on the way out (py-libp2p's QUIC
    listener leaves its socket open when only cancelled)."""
    async with AsyncExitStack() as stack:
        for host in hosts:
            await stack.enter_async_context(host.run(listen_addrs=LISTEN))
            stack.push_async_callback(close_connections, host)
        yield


@asynccontextmanager
async def pair(dialler: IHost, listener: IHost) -> AsyncIterator[None]:
    async with running(listener, dialler):
        listener.set_stream_handler(ECHO, digest_handler)
        suffix = multiaddr.Multiaddr(f"/p2p/{listener.get_id()}")
        addrs = [a.decapsulate(suffix) for a in listener.get_addrs() if "quic" in str(a)]
        await dialler.connect(PeerInfo(listener.get_id(), addrs))
        yield


async def identify(dialler: IHost, listener: IHost) -> Identify:
    """py-libp2p's identify exchange over the QUIC connection, read to its end."""
    stream = await dialler.new_stream(listener.get_id(), [IDENTIFY])
    response = b""
    try:
        while True:
            response += await stream.read()
    except StreamEOF:
        pass
    await stream.close()
    return parse_identify_response(response)


def quic_conns(host: IHost, peer: ID) -> list[str]:
    return [type(c.muxed_conn).__name__ for c in host.get_network().get_connections(peer)]


async def test_two_meshnat_hosts_identify_ping_and_carry_every_byte() -> None:
    dialler, listener = ours(), ours()
    with trio.fail_after(60):
        async with pair(dialler, listener):
            assert quic_conns(dialler, listener.get_id()) == ["QuicConn"]
            answer = await identify(dialler, listener)
            assert ECHO in answer.protocols
            # py-libp2p writes QUIC observations as /tcp/ (FACTS.md); the port is the point:
            # the dial left from the dialler's listen port.
            observed = multiaddr.Multiaddr(answer.observed_addr)
            listen_ports = {a.value_for_protocol("udp") for a in dialler.get_addrs()
                            if "quic" in str(a)}
            assert observed.value_for_protocol("tcp") in listen_ports
            assert len(await PingService(dialler).ping(listener.get_id(), ping_amt=3)) == 3
            await send_and_check(dialler, listener, 16 << 20)
            async with trio.open_nursery() as nursery:
                for size in [0, 1, 1000, 65536, 65537, 300_000] * 5:
                    nursery.start_soon(send_and_check, dialler, listener, size)


async def test_meshnat_dials_a_stock_py_libp2p_quic_listener() -> None:
    dialler, listener = ours(), stock()
    with trio.fail_after(60):
        async with pair(dialler, listener):
            assert quic_conns(dialler, listener.get_id()) == ["QuicConn"]
            assert len(await PingService(dialler).ping(listener.get_id(), ping_amt=2)) == 2
            await send_and_check(dialler, listener, 2 << 20)
            for size in (0, 1, 70_000):
                await send_and_check(dialler, listener, size)


async def test_a_stock_listener_with_a_forged_certificate_is_refused() -> None:
    victim = create_new_key_pair()
    victim_id = ID.from_pubkey(victim.public_key)
    with quic_certificates_claiming(victim.public_key):
        impostor = stock()
    dialler = ours()
    with trio.fail_after(30):
        async with running(impostor, dialler):
            suffix = multiaddr.Multiaddr(f"/p2p/{impostor.get_id()}")
            addrs = [a.decapsulate(suffix) for a in impostor.get_addrs()]
            with pytest.raises(Exception, match=r"(?i)fail|unable|refused|connect"):
                await dialler.connect(PeerInfo(victim_id, addrs))
            assert not dialler.get_network().get_connections(victim_id)


async def test_a_dialler_with_a_forged_certificate_is_refused_and_the_port_goes_on() -> None:
    """The impostor holds only the victim's public key; the listener never sees it as the
    victim, and an honest dialler connects right after."""
    victim = create_new_key_pair()
    listener = ours()
    with trio.fail_after(30):
        async with running(listener), trio.open_nursery() as nursery:
            (address,) = [a for a in listener.get_addrs() if "quic" in str(a)]
            port = int(address.value_for_protocol("udp"))
            impostor = _endpoint(forged(victim))
            honest_pair = create_new_key_pair()
            honest = _endpoint(libp2p_certificate(honest_pair.private_key))
            await nursery.start(impostor.serve)
            await nursery.start(honest.serve)
            with pytest.raises((OSError, MuxedConnUnavailable, MuxedStreamError)):
                conn = await impostor.dial(("127.0.0.1", port), listener.get_id(), timeout=5)
                await _opened_a_stream(conn)  # the server's refusal may follow its Finished
            assert not listener.get_network().get_connections(ID.from_pubkey(victim.public_key))
            conn = await honest.dial(("127.0.0.1", port), listener.get_id(), timeout=5)
            assert conn.peer_id == listener.get_id()
            await conn.close()
            nursery.cancel_scope.cancel()


async def test_a_stock_py_libp2p_dialler_reaches_meshnat() -> None:
    """py-libp2p's own QUIC (aioquic) dialling meshnat's listener: aioquic pads its first
    datagram with zeros after the packet, which qh3 alone would not count (`core`)."""
    dialler, listener = stock(), ours()
    with trio.fail_after(60):
        async with pair(dialler, listener):
            assert quic_conns(listener, dialler.get_id()) == ["QuicConn"]
            assert len(await PingService(dialler).ping(listener.get_id(), ping_amt=2)) == 2
            await send_and_check(dialler, listener, 2 << 20)
            for size in (0, 1, 70_000):
                await send_and_check(dialler, listener, size)


def _endpoint(certificate: tuple[bytes, bytes]) -> QuicEndpoint:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    limits = {"max_stream_data": 1 << 20, "max_data": 1 << 22, "idle_timeout": 10.0}
    return QuicEndpoint(sock, client=configuration(certificate, is_client=True, **limits),
                        server=None, read_timeout=5.0)


async def _opened_a_stream(conn: QuicConn) -> None:
    stream = await conn.open_stream()
    await stream.write(b"x")
    await stream.read()


async def test_two_first_dials_at_once_share_one_dialling_socket() -> None:
    """A node with no QUIC listener dials from one socket of its own per family. Two dials
    that both found it missing used to make one each: the first was never closed (a leaked
    socket, seen as a ResourceWarning in the port-mapping mesh test)."""
    pair_ = create_new_key_pair()
    transport = QuicTransport(pair_)
    dialler = new_host(key_pair=pair_, sec_opt=identity.secure_transports(pair_),
                       transports=[TCP(), transport])
    listener = ours()
    async with running(listener), \
            dialler.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        suffix = multiaddr.Multiaddr(f"/p2p/{listener.get_id()}")
        target = next(a.decapsulate(suffix) for a in listener.get_addrs() if "quic" in str(a))
        conns: list[QuicConn] = []

        async def dial() -> None:
            conns.append(await transport.dial(target))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dial)
                nursery.start_soon(dial)
        try:
            assert len(conns) == 2 and conns[0].endpoint is conns[1].endpoint
        finally:
            for conn in conns:
                await conn.close()
            await transport.close()
