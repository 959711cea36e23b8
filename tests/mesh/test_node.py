"""MeshNode on loopback: connect, mount, unmount, identity, and a node that survives bugs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from meshnat import EchoService, MeshNode, NatClassifier, NodeConfig, _libp2p
from meshnat._libp2p import INetStream, PeerInfo, TaskStatus, TProtocol, guarded_handler
from meshnat.echo import echo
from meshnat.errors import (
    ConfigError,
    LocalProtocolError,
    NotMounted,
    PeerUnavailable,
    ServiceFailed,
)
from tests.support.fake_reflectors import LOOPBACK, nodes


def only(peer: PeerInfo, transport: str) -> PeerInfo:
    return PeerInfo(peer.peer_id, [a for a in peer.addrs if f"/{transport}/" in str(a)])


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_two_nodes_open_a_stream_to_a_mounted_echo_service(transport: str) -> None:
    async with nodes(2) as (a, b):
        service = await a.mount(EchoService())
        with trio.fail_after(10):
            answer = await echo(b, only(a.peer_info(), transport), b"ping")
        assert answer == b"ping" and service.served == 1
        conns = b.host.get_network().get_connections(a.peer_id)
        assert {_libp2p.transport_of(c) for c in conns} == {transport}


async def test_advertised_addresses_are_concrete_and_name_the_peer() -> None:
    async with MeshNode(NodeConfig()) as node:  # listens on 0.0.0.0
        addrs = [str(a) for a in node.addrs]
    assert addrs and not any("/0.0.0.0/" in a for a in addrs)
    assert all(a.endswith(f"/p2p/{node_id}") for a in addrs for node_id in [addrs[0][-52:]])
    assert {"tcp", "udp"} <= {a.split("/")[3] for a in addrs}


async def test_every_address_a_wildcard_listener_advertises_is_dialable() -> None:
    # py-libp2p's wildcard expansion dropped /quic-v1 from the UDP listener's addresses
    async with MeshNode(NodeConfig()) as node, MeshNode(NodeConfig()) as dialer:
        await node.mount(EchoService())
        udp = [a for a in node.addrs if "/udp/" in str(a)]
        assert udp and all("/quic-v1/p2p/" in str(a) for a in udp)
        for addr in node.addrs:
            with trio.fail_after(15):
                peer = PeerInfo(node.peer_id, [addr])
                assert await echo(dialer, peer, str(addr).encode()) == str(addr).encode()
            for conn in dialer.host.get_network().get_connections(node.peer_id):
                await conn.close()


async def test_identify_advertises_no_wildcard_address() -> None:
    # identify sends host.get_addrs(): py-libp2p's were the raw listen addresses (0.0.0.0),
    # which peers stored and dialled (reaching themselves)
    async with MeshNode(NodeConfig()) as node:
        advertised = {str(a) for a in node.host.get_addrs()}
        assert advertised and advertised <= {str(a) for a in node.addrs}
    assert not any("/0.0.0.0/" in a for a in advertised)


async def test_tcp_dials_leave_from_the_listen_ip() -> None:
    # unbound, the kernel picks 127.0.0.1 for loopback, and peers saw a network the node is not on
    async with MeshNode(NodeConfig(listen_ip="127.0.1.1")) as a, \
            MeshNode(NodeConfig(listen_ip="127.0.2.1")) as b:
        with trio.fail_after(15):
            await a.connect(PeerInfo(b.peer_id, [x for x in b.addrs if "/tcp/" in str(x)]))
        (conn,) = b.host.get_network().get_connections(a.peer_id)
        remote = _libp2p.connection_remote(conn)
        assert remote is not None and str(remote.ip) == "127.0.1.1"


async def test_unmounted_service_stops_answering_and_cannot_be_unmounted_twice() -> None:
    async with nodes(2) as (a, b):
        service = await a.mount(EchoService())
        await a.unmount(service)
        with trio.fail_after(10), pytest.raises(PeerUnavailable):
            await echo(b, a.peer_info(), b"ping")
        with pytest.raises(LocalProtocolError):
            await a.unmount(service)


async def test_a_node_bound_service_holds_the_node_only_while_mounted() -> None:
    classifier = NatClassifier([])
    message = "mount NatClassifier on a running MeshNode first"
    with pytest.raises(NotMounted, match=message):
        _ = classifier.node
    async with MeshNode(LOOPBACK) as node:
        assert (await node.mount(classifier)).node is node
        await node.unmount(classifier)
        with pytest.raises(NotMounted, match=message):
            _ = classifier.node
        assert (await node.mount(classifier)).node is node  # and it can be mounted again


async def test_a_handler_bug_does_not_take_the_node_down() -> None:
    broken = TProtocol("/test/broken/1")

    async def boom(stream: INetStream) -> None:
        raise RuntimeError("bug")

    async with nodes(2) as (a, b):
        a.host.set_stream_handler(broken, guarded_handler("broken", boom))
        await a.mount(EchoService())
        with trio.fail_after(10):
            stream = await b.open_stream(a.peer_info(), broken)
            with pytest.raises(Exception):  # noqa: B017  the stream is reset, any error will do
                await stream.read(1)
            assert await echo(b, a.peer_info(), b"still alive") == b"still alive"


async def test_identity_is_kept_in_a_private_key_file(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    config = NodeConfig(listen_ip="127.0.0.1", key_file=key)
    async with MeshNode(config) as first:
        first_id = first.peer_id
    assert key.stat().st_mode & 0o777 == 0o600
    async with MeshNode(config) as second:
        assert second.peer_id == first_id
    key.write_bytes(b"not a key")
    with pytest.raises(ConfigError):
        async with MeshNode(config):
            pass


@pytest.mark.parametrize("bad", [{"listen_ip": "localhost"}, {"tcp_port": 70000},
                                 {"dial_timeout": 0}])
def test_bad_node_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        NodeConfig(**bad)  # type: ignore[arg-type]


async def test_a_node_must_be_running_to_mount() -> None:
    with pytest.raises(LocalProtocolError):
        await MeshNode(LOOPBACK).mount(EchoService())


async def test_a_fixed_port_already_in_use_is_refused_not_shared() -> None:
    async with MeshNode(LOOPBACK) as first:
        taken = NodeConfig(listen_ip="127.0.0.1", tcp_port=first.listen_endpoint("tcp").port)
        with pytest.raises(ConfigError, match="not free"):
            async with MeshNode(taken):
                pass


class _Crashes:
    """Crashes on purpose once running: the first `crashes` runs fail when `go` is set (or at
    once, for runs after the first); later runs stay up."""

    def __init__(self, crashes: int) -> None:
        self.crashes, self.runs = crashes, 0
        self.go = trio.Event()
        self.up_again = trio.Event()

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        self.runs += 1
        node.host.set_stream_handler(TProtocol("/test/crashes/1"), guarded_handler("t", echo_none))
        try:
            task_status.started()
            await self.go.wait()
            if self.runs <= self.crashes:
                raise RuntimeError(f"a bug in a running service (run {self.runs})")
            self.up_again.set()
            await trio.sleep_forever()
        finally:
            node.host.remove_stream_handler(TProtocol("/test/crashes/1"))


async def echo_none(stream: INetStream) -> None:
    await stream.close()


FAST_RESTARTS = dict(service_restart_backoff=0.001, service_restarts=3)


async def test_a_running_service_that_crashes_is_restarted_loudly_and_the_node_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = replace(LOOPBACK, **FAST_RESTARTS)  # type: ignore[arg-type]
    async with MeshNode(config) as a, MeshNode(LOOPBACK) as b:
        crashing = await a.mount(_Crashes(crashes=1))
        await a.mount(EchoService())
        crashing.go.set()
        with trio.fail_after(10):
            await crashing.up_again.wait()
            assert await echo(b, a.peer_info(), b"alive") == b"alive"
        assert crashing.runs == 2
        failed = [r for r in caplog.records if r.levelname == "ERROR" and "_Crashes" in
                  r.getMessage()]
        assert len(failed) == 1 and failed[0].exc_info is not None
        assert "restarting" in failed[0].getMessage()
        await a.unmount(crashing)  # still mounted: it can be unmounted once
        with pytest.raises(LocalProtocolError):
            await a.unmount(crashing)


async def test_a_service_that_keeps_crashing_stops_the_node_with_a_clear_error() -> None:
    config = replace(LOOPBACK, **FAST_RESTARTS)  # type: ignore[arg-type]
    crashing = _Crashes(crashes=100)
    with trio.fail_after(20), pytest.raises(ServiceFailed, match="_Crashes failed 4 times"):
        async with MeshNode(config) as node:
            await node.mount(crashing)
            crashing.go.set()
            await trio.sleep_forever()  # until the node stops
    assert crashing.runs == 4  # the first run and three restarts


async def test_a_service_that_fails_to_start_is_reported_by_mount_not_restarted() -> None:
    class FailsToStart:
        runs = 0

        async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
            self.runs += 1
            raise RuntimeError("cannot start")

    service = FailsToStart()
    async with MeshNode(LOOPBACK) as node:
        with pytest.raises(RuntimeError, match="cannot start"):
            await node.mount(service)
        assert service.runs == 1


async def test_connections_are_labelled_by_path_and_punched_ones_by_their_source() -> None:
    from types import SimpleNamespace

    from meshnat.echo import ECHO_PROTOCOL
    from meshnat.paths import PathKind

    async with nodes(3) as (a, b, stranger):
        await b.mount(EchoService())
        with trio.fail_after(10):
            await a.connect(b.peer_info())
            (found,) = a.connections(b.peer_id)
            assert (found.kind, found.transport) == (PathKind.DIRECT, "tcp")
            assert found.remote is not None and a.best_connection(b.peer_id) == found
            source = SimpleNamespace(punched=lambda peer: (
                SimpleNamespace(connection=found.conn) if peer == b.peer_id else None),
                doubtful=lambda conn: False)
            with a.track_punched(source):
                assert [c.kind for c in a.connections(b.peer_id)] == [PathKind.PUNCHED]
                stream = await a.open_stream(b.peer_info(), ECHO_PROTOCOL)
                assert a.path_of(stream) is PathKind.PUNCHED
                await stream.reset()
            assert a.describe(found.conn).kind is PathKind.DIRECT  # the source is gone
            assert a.connections(stranger.peer_id) == []
            with pytest.raises(PeerUnavailable, match="no connection"):
                a.best_connection(stranger.peer_id)
