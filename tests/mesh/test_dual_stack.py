"""Dual-stack nodes on loopback (127.0.0.1 and ::1): one port per transport in both families,
every address dialable, datagrams sent from the socket of the destination's family, and a punch
between two endpoint-dependent sides that IPv6 makes possible."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace

import pytest
import trio

from meshnat import EchoService, MeshNode, NodeConfig, _libp2p
from meshnat._libp2p import PeerInfo, is_relayed
from meshnat.discovery import DiscoveryConfig, PeerAddressDiscovery
from meshnat.echo import ECHO_PROTOCOL, echo
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError, PeerUnavailable
from meshnat.punch import HolePuncher, PunchConfig
from meshnat.punch.messages import MappingHint
from meshnat.punch.race import PathRace
from meshnat.records import RecordAuthority
from meshnat.reflection import ReflectionService
from meshnat.relay import RelayClient, RelayService
from meshnat.traversal import PairState, TraversalService
from meshnat.wire import frame_datagram

DUAL = NodeConfig(listen_ip="127.0.0.1", listen_ip6="::1")


async def test_a_dual_stack_node_listens_on_one_port_per_transport_in_both_families() -> None:
    # wildcards: the [::] sockets must be IPv6-only, or they would collide with 0.0.0.0's
    config = NodeConfig(listen_ip="0.0.0.0", listen_ip6="::")
    async with MeshNode(config) as node:
        assert node.ip_versions == {4, 6}
        for transport in ("tcp", "udp"):
            v4, v6 = node.listen_endpoint(transport, 4), node.listen_endpoint(transport, 6)
            assert (str(v4.ip), str(v6.ip)) == ("0.0.0.0", "::")
            assert v4.port == v6.port  # one port number in both families
            assert node.listen_endpoint(transport) == v4
        assert node.udp.versions == {4, 6}
        assert not any("/ip6/fe80" in str(a) for a in node.addrs)  # undialable without a zone


async def test_every_address_of_a_dual_stack_node_is_dialable_in_its_own_family() -> None:
    async with MeshNode(DUAL) as node, MeshNode(DUAL) as dialer:
        await node.mount(EchoService())
        addrs = node.addrs
        assert {("/ip4/" in str(a), "/tcp/" in str(a)) for a in addrs} == {
            (True, True), (True, False), (False, True), (False, False)}
        for addr in addrs:
            with trio.fail_after(15):
                assert await echo(dialer, PeerInfo(node.peer_id, [addr]), b"hi") == b"hi"
            (conn,) = dialer.host.get_network().get_connections(node.peer_id)
            remote = _libp2p.connection_remote(conn)
            assert remote is not None and remote.ip.version == (4 if "/ip4/" in str(addr) else 6)
            await conn.close()


async def test_datagrams_leave_from_the_socket_of_the_destinations_family() -> None:
    async with MeshNode(DUAL) as a, MeshNode(DUAL) as b:
        seen: list[Endpoint] = []
        got = trio.Event()

        def on_datagram(data: bytes, src: Endpoint) -> None:
            seen.append(src)
            if len(seen) == 2:
                got.set()

        unsubscribe = b.udp.subscribe(on_datagram)
        port = b.listen_endpoint("udp").port
        for ip in ("127.0.0.1", "::1"):
            await a.udp.sendto(frame_datagram(b"\x80"), Endpoint.parse(f"[{ip}]:{port}"))
        with trio.fail_after(5):
            await got.wait()
        unsubscribe()
        a_port = a.listen_endpoint("udp").port
        assert sorted(seen) == [Endpoint.parse(f"127.0.0.1:{a_port}"),
                                Endpoint.parse(f"[::1]:{a_port}")]


async def test_an_ipv4_only_node_refuses_to_send_to_ipv6() -> None:
    async with MeshNode(NodeConfig(listen_ip="127.0.0.1")) as node:
        assert node.udp.versions == {4} and node.ip_versions == {4}
        with pytest.raises(PeerUnavailable, match="IPv6"):
            await node.udp.sendto(b"x", Endpoint.parse("[::1]:9"))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"listen_ip": "::1", "listen_ip6": "::1"}, "beside an IPv4"),
    ({"listen_ip6": "127.0.0.1"}, "beside an IPv4"),
    ({"listen_ip6": "nonsense"}, "IPv6 address"),
    ({"listen_ip6": "::", "quic_stack": "py-libp2p"}, "quic_stack"),
])
def test_dual_stack_config_is_checked(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NodeConfig(**kwargs)  # type: ignore[arg-type]


async def test_two_endpoint_dependent_dual_stack_sides_punch_over_ipv6() -> None:
    hard = PunchConfig(mapping=MappingHint.ENDPOINT_DEPENDENT)
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            relay = await stack.enter_async_context(MeshNode(DUAL))
            a = await stack.enter_async_context(MeshNode(DUAL))
            b = await stack.enter_async_context(MeshNode(DUAL))
            await relay.mount(RelayService())
            a_relay, b_relay = await a.mount(RelayClient()), await b.mount(RelayClient())
            await b_relay.reserve(relay.peer_info())
            await b.mount(HolePuncher(hard))
            puncher = await a.mount(HolePuncher(hard))
            await a_relay.dial(relay.peer_info(), b.peer_id)
            result = await puncher.punch(b.peer_id)
            assert not is_relayed(result.connection)
            # without IPv6 on both sides this gives up at once (test_punch.py); loopback has
            # no NAT, so the IPv4 pairs may answer as well: whichever is first is taken
            assert result.remote in b.local_endpoints(result.transport)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_discovery_runs_per_family_and_the_record_carries_both(transport: str) -> None:
    votes = replace(DiscoveryConfig(), group_by_network=False, timeout=2.0)  # one loopback IP
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            reflectors = [await stack.enter_async_context(MeshNode(DUAL)) for _ in range(3)]
            for node in reflectors:
                await node.mount(ReflectionService())
            client = await stack.enter_async_context(MeshNode(DUAL))
            discovery = await client.mount(PeerAddressDiscovery(
                [r.peer_info() for r in reflectors], votes))
            v6 = await discovery.discover(transport, version=6)
            assert v6.address == Endpoint.parse(
                f"[::1]:{client.listen_endpoint(transport, 6).port}")  # asked over IPv6
            assert discovery.latest(transport) is None  # the IPv4 round is its own
            v4 = await discovery.discover(transport)
            assert v4.address == Endpoint.parse(
                f"127.0.0.1:{client.listen_endpoint(transport).port}")
            assert discovery.latest(transport, 6) == v6 and discovery.latest(transport) == v4
            records = await client.mount(RecordAuthority(discovery=discovery))
            addrs = {str(a) for a in records.current().record.addrs}
            assert {a.split("/")[1] for a in addrs if f"/{transport}/" in a} == {"ip4", "ip6"}


async def test_an_ipv4_only_node_cannot_discover_over_ipv6() -> None:
    async with MeshNode(NodeConfig(listen_ip="127.0.0.1")) as node:
        discovery = await node.mount(PeerAddressDiscovery([]))
        with pytest.raises(ConfigError, match="IPv6"):
            await discovery.discover("udp", version=6)


async def test_connect_does_not_wait_for_an_address_that_swallows_packets() -> None:
    """Happy eyeballs: the first address (a UDP socket that never answers, like a firewalled
    IPv6 address) holds the next attempt back by ATTEMPT_DELAY, not by the whole timeout."""
    import socket

    async with MeshNode(DUAL) as node, MeshNode(DUAL) as dialer:
        await node.mount(EchoService())
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sink:
            sink.bind(("::1", 0))
            hole = f"/ip6/::1/udp/{sink.getsockname()[1]}/quic-v1/p2p/{node.peer_id}"
            real = next(a for a in node.addrs if str(a).startswith("/ip4/") and "/tcp/" in str(a))
            peer = PeerInfo(node.peer_id, [_libp2p.parse_multiaddr(hole), real])
            with trio.fail_after(5):  # a QUIC dial to the sink alone takes 10 s to give up
                await dialer.connect(peer, timeout=3)
            (conn,) = dialer.host.get_network().get_connections(node.peer_id)
            assert _libp2p.transport_of(conn) == "tcp"  # the second address won


def test_addresses_alternate_families_from_the_first_ones() -> None:
    parse = _libp2p.parse_multiaddr
    a4, b4, a6, b6 = (parse(t) for t in ("/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.5/tcp/1",
                                         "/ip6/2001:db8::1/tcp/1", "/ip6/2001:db8::2/tcp/1"))
    circuit = parse("/p2p-circuit")
    assert _libp2p.interleave_addrs([a4, b4, a6, b6, circuit]) == [a4, a6, b4, b6, circuit]
    assert _libp2p.interleave_addrs([a6, b6, a4]) == [a6, a4, b6]


async def test_birthday_probing_runs_beside_an_ipv6_traversal_that_hears_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cone and a symmetric side, both dual stack, IPv6 hints unknown: the plan runs
    birthday probing on IPv4 beside the IPv6 traversal. Here the traversal hears nothing (a
    NAT66 or a broken IPv6 path would do that; TCP is held too), and birthday probing
    connects over IPv4. Before /meshnat/punch/1.1.0 IPv6 candidates on both sides replaced
    birthday probing, and this punch failed after the traversal's timeout."""
    async def hears_nothing(*args: object, **kwargs: object) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(PathRace, "_traversal", hears_nothing)
    monkeypatch.setattr(PathRace, "_tcp", hears_nothing)
    easy = PunchConfig(mapping=MappingHint.ENDPOINT_INDEPENDENT, punch_timeout=5.0)
    hard = PunchConfig(mapping=MappingHint.ENDPOINT_DEPENDENT, punch_timeout=5.0)
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            relay = await stack.enter_async_context(MeshNode(DUAL))
            a = await stack.enter_async_context(MeshNode(DUAL))
            b = await stack.enter_async_context(MeshNode(DUAL))
            await relay.mount(RelayService())
            a_relay, b_relay = await a.mount(RelayClient()), await b.mount(RelayClient())
            await b_relay.reserve(relay.peer_info())
            responder = await b.mount(HolePuncher(hard))
            puncher = await a.mount(HolePuncher(easy))
            await a_relay.dial(relay.peer_info(), b.peer_id)
            result = await puncher.punch(b.peer_id)
            assert result.transport == "udp" and not is_relayed(result.connection)
            assert result.remote is not None and result.remote.ip.version == 4
            # a birthday socket of the hard side's, not its listen port
            assert result.remote.port != b.listen_endpoint("udp").port
            assert puncher.statistics().paid > 0 and responder.statistics().paid > 0


async def test_an_explicit_traversal_between_dual_stack_nodes_has_ipv6_pairs_of_its_own() -> None:
    """A traversal on its own sockets (not the shared port) opens one per family on one port
    number: its IPv6 pair comes alive, and QUIC taken on it runs over IPv6 from that port.
    Before, the own socket was IPv4 only and IPv6 candidates were never probed."""
    async with MeshNode(DUAL) as a, MeshNode(DUAL) as b:
        await a.connect(b.peer_info())
        ours = await a.mount(TraversalService())
        await b.mount(TraversalService())
        await b.mount(EchoService())
        with trio.fail_after(20):
            traversal = await ours.start(b.peer_id)
            assert traversal.carrier is not None and traversal.carrier.versions == {4, 6}
            port = traversal.table.local_port
            assert port not in (a.listen_endpoint("udp", 4).port, 0)
            v6 = next(p for p in traversal.table.pairs() if p.remote.ip.version == 6)
            alive = await ours.wait_for(v6.id, PairState.ALIVE, 5)
            assert alive.local == Endpoint.parse(f"[::1]:{port}")
            await ours.take(alive.id)
            opened = await ours.open_stream(alive.id, ECHO_PROTOCOL)
            await opened.stream.write(b"over IPv6")
            assert await opened.stream.read(100) == b"over IPv6"
            remote = _libp2p.connection_remote(opened.connection)
            assert remote is not None and remote.ip.version == 6
            assert _libp2p.local_port(opened.connection) == port
