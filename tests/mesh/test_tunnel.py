"""Tunnels on loopback: a TCP client -> forward -> tunnel -> expose -> TCP target, for real."""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import pytest
import trio

from meshnat import MeshNode
from meshnat.errors import PeerUnavailable, TunnelRefused
from meshnat.events import MeshEvent, TunnelClosed
from meshnat.records import RecordAuthority
from meshnat.tunnel import ANY_PEER, RefusalCode, TunnelConfig, TunnelService
from tests.support.fake_reflectors import nodes

MB = 1024 * 1024
CHUNK = 64 * 1024
Handler = Callable[[trio.SocketStream], Awaitable[None]]


@dataclass
class Target:
    """A TCP service on 127.0.0.1 that counts the connections it accepted."""

    port: int
    accepted: int = 0


@asynccontextmanager
async def target(handler: Handler) -> AsyncIterator[Target]:
    async with trio.open_nursery() as nursery:
        found = Target(0)

        async def counted(stream: trio.SocketStream) -> None:
            found.accepted += 1
            await handler(stream)

        listeners = await nursery.start(partial(trio.serve_tcp, counted, 0, host="127.0.0.1"))
        found.port = listeners[0].socket.getsockname()[1]
        yield found
        nursery.cancel_scope.cancel()


async def echo(stream: trio.SocketStream) -> None:
    while data := await stream.receive_some(CHUNK):
        await stream.send_all(data)
    await stream.send_eof()


class Reports:
    """An EventSink keeping TunnelClosed events, with a way to wait for the n-th."""

    def __init__(self) -> None:
        self.closed: list[TunnelClosed] = []
        self._changed = trio.Event()

    def __call__(self, event: MeshEvent) -> None:
        if isinstance(event, TunnelClosed):
            self.closed.append(event)
            self._changed.set()
            self._changed = trio.Event()

    async def wait(self, count: int) -> list[TunnelClosed]:
        while len(self.closed) < count:
            await self._changed.wait()
        return self.closed


@dataclass
class Pair:
    """Node a forwards, node b exposes; both record their TunnelClosed events."""

    a: MeshNode
    b: MeshNode
    client: TunnelService
    server: TunnelService
    forwarded: Reports = field(default_factory=Reports)
    served: Reports = field(default_factory=Reports)


@asynccontextmanager
async def pair(config: TunnelConfig | None = None) -> AsyncIterator[Pair]:
    async with nodes(2) as (a, b):
        forwarded, served = Reports(), Reports()
        client = await a.mount(TunnelService(config, events=forwarded))
        server = await b.mount(TunnelService(config, events=served))
        yield Pair(a, b, client, server, forwarded, served)


@asynccontextmanager
async def forwarding(p: Pair, name: str) -> AsyncIterator[int]:
    """A local port on node a forwarded to b's service `name`."""
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(p.client.forward, p.b.peer_info(), name,
                                      ("127.0.0.1", 0))
        yield port
        nursery.cancel_scope.cancel()


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def send_then_eof(stream: trio.SocketStream, data: bytes) -> None:
    for i in range(0, len(data), CHUNK):
        await stream.send_all(data[i:i + CHUNK])
    await stream.send_eof()


async def digest_until_eof(stream: trio.SocketStream) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while data := await stream.receive_some(CHUNK):
        h.update(data)
        n += len(data)
    return h.hexdigest(), n


async def test_50_mb_each_way_at_once_arrives_intact() -> None:
    upload, download = pattern(50 * MB, 1), pattern(50 * MB, 2)
    server_got: list[tuple[str, int]] = []

    async def both_ways(stream: trio.SocketStream) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_eof, stream, download)
            server_got.append(await digest_until_eof(stream))

    with trio.fail_after(120):
        async with pair() as p, target(both_ways) as t:
            p.server.expose("bulk", ("127.0.0.1", t.port), allow={p.a.peer_id})
            async with forwarding(p, "bulk") as port:
                client = await trio.open_tcp_stream("127.0.0.1", port)
                async with client, trio.open_nursery() as nursery:
                    nursery.start_soon(send_then_eof, client, upload)
                    client_got = await digest_until_eof(client)
                (served,) = await p.served.wait(1)
                (forwarded,) = await p.forwarded.wait(1)
            peer_a = str(p.a.peer_id)
    assert client_got == (hashlib.sha256(download).hexdigest(), len(download))
    assert server_got == [(hashlib.sha256(upload).hexdigest(), len(upload))]
    assert (served.outcome, served.path, served.peer, served.service) == (
        "closed", "direct", peer_a, "bulk")
    assert (served.bytes_in, served.bytes_out) == (len(upload), len(download))
    assert (forwarded.outcome, forwarded.path) == ("closed", "direct")
    assert (forwarded.bytes_out, forwarded.bytes_in) == (len(upload), len(download))


async def test_a_client_that_shuts_its_write_side_still_gets_the_whole_answer() -> None:
    async def answer_after_eof(stream: trio.SocketStream) -> None:
        _, size = await digest_until_eof(stream)  # the request ends with the client's EOF
        await send_then_eof(stream, pattern(size * 100, 3))

    with trio.fail_after(30):
        async with pair() as p, target(answer_after_eof) as t:
            p.server.expose("half", ("127.0.0.1", t.port), allow={p.a.peer_id})
            async with forwarding(p, "half") as port:
                client = await trio.open_tcp_stream("127.0.0.1", port)
                async with client:
                    await send_then_eof(client, b"x" * 10_000)
                    got = await digest_until_eof(client)
    assert got == (hashlib.sha256(pattern(1_000_000, 3)).hexdigest(), 1_000_000)


async def test_a_hundred_tunnelled_connections_at_once() -> None:
    config = TunnelConfig(max_tunnels_per_peer=128, max_tunnels_per_network=128)
    answers: dict[int, bytes] = {}

    async def one(port: int, i: int) -> None:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            data = pattern(20_000, 100 + i)
            await send_then_eof(client, data)
            got = b""
            while chunk := await client.receive_some(CHUNK):
                got += chunk
            answers[i] = got

    with trio.fail_after(60):
        async with pair(config) as p, target(echo) as t:
            p.server.expose("echo", ("127.0.0.1", t.port), allow={p.a.peer_id})
            async with forwarding(p, "echo") as port, trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, port, i)
            served = await p.served.wait(100)
    assert t.accepted == 100
    assert all(answers[i] == pattern(20_000, 100 + i) for i in range(100))
    assert {e.outcome for e in served} == {"closed"}
    assert p.server.statistics().active == 0


async def test_a_peer_not_allowed_is_refused_and_the_target_never_sees_it() -> None:
    with trio.fail_after(20):
        async with pair() as p, target(echo) as t:
            p.server.expose("private", ("127.0.0.1", t.port), allow={p.b.peer_id})
            with pytest.raises(TunnelRefused, match="not-allowed") as refused:
                await p.client.open(p.b.peer_info(), "private")
            assert refused.value.refusal is RefusalCode.NOT_ALLOWED
            async with forwarding(p, "private") as port:  # a local client just sees EOF
                client = await trio.open_tcp_stream("127.0.0.1", port)
                async with client:
                    assert await client.receive_some(CHUNK) == b""
                (forwarded,) = await p.forwarded.wait(1)
    assert t.accepted == 0
    assert (forwarded.outcome, forwarded.bytes_in) == ("not-allowed", 0)
    assert [e.outcome for e in p.served.closed] == ["not-allowed", "not-allowed"]


async def test_any_peer_must_be_asked_for_and_then_lets_everyone_in() -> None:
    with trio.fail_after(20):
        async with pair() as p, target(echo) as t:
            with pytest.raises(ValueError, match="allow"):
                p.server.expose("open", ("127.0.0.1", t.port), allow=set())
            p.server.expose("open", ("127.0.0.1", t.port), allow=ANY_PEER)
            tunnel = await p.client.open(p.b.peer_info(), "open")
            await tunnel.send_all(b"ping")
            await tunnel.send_eof()
            assert await tunnel.receive_some(CHUNK) == b"ping"
            assert await tunnel.receive_some(CHUNK) == b""
            await tunnel.aclose()
    assert p.server.services() == ("open",)


async def test_an_unknown_service_is_refused() -> None:
    with trio.fail_after(20):
        async with pair() as p:
            p.server.expose("web", ("127.0.0.1", 8080), allow={p.a.peer_id})
            with pytest.raises(TunnelRefused) as refused:
                await p.client.open(p.b.peer_info(), "nothing-here")
    assert refused.value.refusal is RefusalCode.UNKNOWN_SERVICE
    assert "nothing-here" in str(refused.value)


async def test_a_node_exposing_nothing_refuses_before_reading_a_request() -> None:
    with trio.fail_after(20):
        async with pair() as p:
            with pytest.raises(TunnelRefused) as refused:
                await p.client.open(p.b.peer_info(), "nothing-here")
    assert refused.value.refusal is RefusalCode.NOT_ALLOWED
    assert p.server.statistics().active == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_target_that_is_down_is_refused_clearly() -> None:
    with trio.fail_after(20):
        async with pair() as p:
            p.server.expose("down", ("127.0.0.1", free_port()), allow={p.a.peer_id})
            with pytest.raises(TunnelRefused, match="down") as refused:
                await p.client.open(p.b.peer_info(), "down")
            assert refused.value.refusal is RefusalCode.TARGET_REFUSED
            assert p.server.statistics().active == 0


async def test_a_target_that_never_accepts_times_out() -> None:
    config = TunnelConfig(connect_timeout=0.5)
    with socket.socket() as full:  # Linux: listen(0) takes one connection, then drops SYNs
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port))
        with queued, trio.fail_after(20):
            async with pair(config) as p:
                p.server.expose("stuck", ("127.0.0.1", port), allow={p.a.peer_id})
                with pytest.raises(TunnelRefused) as refused:
                    await p.client.open(p.b.peer_info(), "stuck")
    assert refused.value.refusal is RefusalCode.TARGET_TIMEOUT


async def test_tunnels_past_the_per_peer_and_node_limits_are_refused() -> None:
    with trio.fail_after(30):
        async with pair(TunnelConfig(max_tunnels_per_peer=2)) as p, target(echo) as t:
            p.server.expose("echo", ("127.0.0.1", t.port), allow=ANY_PEER)
            held = [await p.client.open(p.b.peer_info(), "echo") for _ in range(2)]
            with pytest.raises(TunnelRefused) as refused:
                await p.client.open(p.b.peer_info(), "echo")
            assert refused.value.refusal is RefusalCode.PEER_LIMIT
            await held.pop().aclose()
            await p.served.wait(2)  # the freed slot is given back when the tunnel ends
            held.append(await p.client.open(p.b.peer_info(), "echo"))
            for tunnel in held:
                await tunnel.aclose()
        async with pair(TunnelConfig(max_tunnels=1)) as p, target(echo) as t:
            p.server.expose("echo", ("127.0.0.1", t.port), allow=ANY_PEER)
            first = await p.client.open(p.b.peer_info(), "echo")
            with pytest.raises(TunnelRefused) as refused:
                await p.client.open(p.b.peer_info(), "echo")
            assert refused.value.refusal is RefusalCode.NODE_LIMIT
            await first.aclose()


async def test_an_idle_tunnel_is_closed_after_the_idle_timeout() -> None:
    with trio.fail_after(20):
        async with pair(TunnelConfig(idle_timeout=0.5)) as p, target(echo) as t:
            p.server.expose("echo", ("127.0.0.1", t.port), allow=ANY_PEER)
            tunnel = await p.client.open(p.b.peer_info(), "echo")
            await tunnel.send_all(b"one")
            assert await tunnel.receive_some(CHUNK) == b"one"
            (served,) = await p.served.wait(1)  # nothing more moves: the server gives up
            with contextlib.suppress(PeerUnavailable):  # py-libp2p may show the reset as EOF
                assert await tunnel.receive_some(CHUNK) == b""
            await tunnel.reset()
    assert (served.outcome, served.bytes_in, served.bytes_out) == ("idle-timeout", 3, 3)


async def test_a_reader_that_pauses_longer_than_yamux_allows_still_gets_everything() -> None:
    """py-libp2p's Yamux write gives up after 5 s at a zero window; the tunnel must not."""
    data = pattern(8 * MB, 4)

    async def blast(stream: trio.SocketStream) -> None:
        await send_then_eof(stream, data)

    with trio.fail_after(60):
        async with pair() as p, target(blast) as t:
            p.server.expose("blast", ("127.0.0.1", t.port), allow=ANY_PEER)
            tunnel = await p.client.open(p.b.peer_info(), "blast")
            first = await tunnel.receive_some(CHUNK)
            await trio.sleep(6)  # the slow reader under test, not a synchronisation
            got = first
            while chunk := await tunnel.receive_some(CHUNK):
                got += chunk
            await tunnel.aclose()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def test_a_garbage_request_is_refused_and_the_service_keeps_serving() -> None:
    from meshnat import _libp2p
    from meshnat.tunnel import TUNNEL_PROTOCOL
    from meshnat.tunnel.messages import OpenRefused
    from meshnat.wire import decode, frame_stream

    with trio.fail_after(20):
        async with pair() as p, target(echo) as t:
            p.server.expose("echo", ("127.0.0.1", t.port), allow=ANY_PEER)
            stream = await p.a.open_stream(p.b.peer_info(), TUNNEL_PROTOCOL)
            await stream.write(frame_stream(b"\xa1\x00\x01 not cbor"))
            answer = decode(await _libp2p.read_frame(stream), OpenRefused)
            assert answer.code is RefusalCode.BAD_REQUEST
            tunnel = await p.client.open(p.b.peer_info(), "echo")
            await tunnel.aclose()


def test_config_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_tunnels"):
        replace(TunnelConfig(), max_tunnels=0)


async def test_a_tunnel_on_the_relay_finishes_there_while_new_ones_take_the_punched_path(
) -> None:
    from contextlib import AsyncExitStack

    from meshnat import Connector, HolePuncher, RelayClient, RelayService
    from meshnat._libp2p import PeerInfo
    from tests.support.fake_reflectors import LOOPBACK

    with trio.fail_after(30):
        async with target(echo) as t, AsyncExitStack() as stack:
            relay, a, b = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(3)]
            await relay.mount(RelayService())
            await (await b.mount(RelayClient())).reserve(relay.peer_info())
            served = Reports()
            await b.mount(HolePuncher())  # labels the connections it punched, mounted
            server = await b.mount(TunnelService(events=served))
            server.expose("echo", ("127.0.0.1", t.port), allow={a.peer_id})
            connector = await a.mount(Connector(
                relays=[relay.peer_info()], relay_client=await a.mount(RelayClient()),
                puncher=await a.mount(HolePuncher())))
            client = await a.mount(TunnelService(connector=connector))
            known_by_id = PeerInfo(b.peer_id, [])
            first = await client.open(known_by_id, "echo")
            assert first.path == "relayed"
            assert await connector.wait_direct(b.peer_id, 10)
            second = await client.open(known_by_id, "echo")
            for tunnel, word in ((first, b"still relayed"), (second, b"punched")):
                await tunnel.send_all(word)
                assert await tunnel.receive_some(CHUNK) == word
                await tunnel.send_eof()
                assert await tunnel.receive_some(CHUNK) == b""
                await tunnel.aclose()
            reports = await served.wait(2)
    assert second.path == "punched"
    assert sorted((r.path, r.outcome) for r in reports) == [("punched", "closed"),
                                                            ("relayed", "closed")]


async def test_exposed_names_are_advertised_in_the_signed_address_record() -> None:
    async with nodes(1) as (node,):
        authority = await node.mount(RecordAuthority())
        tunnels = await node.mount(TunnelService(records=authority))
        before = authority.current().record.seq
        tunnels.expose("web", ("127.0.0.1", 8080), allow=ANY_PEER)
        tunnels.expose("ssh", ("127.0.0.1", 22), allow=ANY_PEER)
        signed = await authority.wait_newer(before)
        assert signed.record.services == ("ssh", "web")
        tunnels.withdraw("ssh")
        assert authority.current().record.services == ("web",)


class _Recorded:
    """A stream that logs its reads and writes, in order ("read" or the bytes written)."""

    def __init__(self, stream: object, log: list[object]) -> None:
        self._stream, self._log = stream, log

    async def write(self, data: bytes) -> None:
        self._log.append(bytes(data))
        await self._stream.write(data)  # type: ignore[attr-defined]

    async def read(self, n: int | None = None) -> bytes:
        self._log.append("read")
        return await self._stream.read(n)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


async def test_the_open_request_goes_out_with_the_negotiation_before_any_read() -> None:
    """One round trip to the answer: before, the client waited for multistream-select's
    answer, then sent its OpenTunnel and waited again."""
    log: list[object] = []
    with trio.fail_after(30):
        async with pair() as p, target(echo) as t:
            p.server.expose("svc", ("127.0.0.1", t.port), allow={p.a.peer_id})
            await p.a.connect(p.b.peer_info())
            conn = p.a.best_connection(p.b.peer_id).conn
            opened = conn.new_stream

            async def recorded() -> object:
                return _Recorded(await opened(), log)

            conn.new_stream = recorded  # type: ignore[method-assign]
            tunnel = await p.client.open(p.b.peer_info(), "svc")
            await tunnel.aclose()
    first_read = log.index("read")
    assert first_read == 1, log[:3]
    assert b"svc" in log[0] and b"/multistream/1.0.0" in log[0]  # type: ignore[operator]
