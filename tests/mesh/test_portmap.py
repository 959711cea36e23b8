"""PortMapper on loopback against a fake NAT-PMP gateway (127.0.9.N:5351): a mapping is
advertised only after a helper's dial-back reached it; a gateway that lies advertises nothing;
mappings are deleted on unmount. And the Connector's mapped rung; and a mapper in a mesh,
confirmed by the mesh's reflectors and published in the mesh's record."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from ipaddress import IPv4Address

import multiaddr
import pytest
import trio

from meshnat import MeshNode, NodeConfig
from meshnat._libp2p import PeerInfo
from meshnat.classify import ProbeHelperService
from meshnat.connect import ConnectConfig, Connector
from meshnat.errors import ConfigError
from meshnat.mesh import MeshConfig, Reachability
from meshnat.mesh.dialback import DialBackService
from meshnat.mesh.messages import DialBackRequest
from meshnat.portmap import MappingProtocol, PortMapConfig, PortMapper
from meshnat.portmap.natpmp import SERVER_PORT
from meshnat.records.authority import RecordAuthority
from meshnat.wire.error_response import ErrorCode, ErrorResponse
from tests.support.fake_reflectors import nodes

GATEWAYS = [IPv4Address(f"127.0.9.{n}") for n in range(1, 65)]
"""Where a fake gateway may listen. NAT-PMP's port is fixed (5351), so the first free address
is taken: another test process on this host (a CI run beside a local one) may hold one; a
single fixed 127.0.0.9 fails every gateway test (EADDRINUSE) while another process holds it."""


@asynccontextmanager
async def gateway_socket() -> AsyncIterator[tuple[trio.socket.SocketType, IPv4Address]]:
    """A UDP socket bound to port 5351 of the first free address in GATEWAYS, and that address."""
    for address in GATEWAYS:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await sock.bind((str(address), SERVER_PORT))
        except OSError:
            sock.close()
            continue
        with sock:
            yield sock, address
        return
    raise OSError(f"no free fake-gateway address among {GATEWAYS[0]}..{GATEWAYS[-1]}")


async def fake_gateway(sock: trio.socket.SocketType, port_offset: int,
                       requests: list[bytes], external_ip: str = "127.0.0.1") -> None:
    """Answers NAT-PMP like a router: external IP `external_ip`, the internal port plus
    `port_offset` as external port (an offset: a router that lies about forwarding)."""
    epoch = 1000
    while True:
        data, addr = await sock.recvfrom(1200)
        requests.append(data)
        epoch += 1
        if data == b"\x00\x00":
            reply = struct.pack("!BBHI4s", 0, 128, 0, epoch, IPv4Address(external_ip).packed)
        else:
            _, op, _, internal, _, lifetime = struct.unpack("!BBHHHI", data)
            external = internal + port_offset if lifetime else 0
            reply = struct.pack("!BBHIHHI", 0, 128 + op, 0, epoch, internal, external, lifetime)
        await sock.sendto(reply, addr)


@pytest.mark.parametrize("lies", [False, True])
async def test_a_mapping_is_advertised_only_once_a_dial_back_reached_it(lies: bool) -> None:
    requests: list[bytes] = []
    async with (gateway_socket() as (gateway_sock, gateway),
                MeshNode(NodeConfig(listen_ip="127.0.0.1")) as client,
                MeshNode(NodeConfig(listen_ip="127.0.0.2")) as helper_node,
                trio.open_nursery() as nursery):
        nursery.start_soon(fake_gateway, gateway_sock, 7 if lies else 0, requests)
        await helper_node.mount(ProbeHelperService())
        await helper_node.mount(DialBackService())
        authority = await client.mount(RecordAuthority())
        config = PortMapConfig(protocols=(MappingProtocol.NATPMP,), gateway=gateway,
                               verify_timeout=4.0)
        mapper = PortMapper(config, helpers=[helper_node.peer_info()], records=authority)
        await client.mount(mapper)
        udp_port = client.listen_endpoint("udp").port
        tcp_port = client.listen_endpoint("tcp").port
        with trio.fail_after(20):
            if lies:
                while mapper.statistics().refuted < 2:
                    await mapper.wait_changed()
            else:
                mapping = await mapper.wait_confirmed("udp")
                await mapper.wait_confirmed("tcp")
        record = authority.current().record
        if lies:  # neither the datagram nor the TCP dial-back reached the node
            assert mapper.confirmed() == [] and record.mapped == 0
            held = {m.transport: m.external.port for m in mapper.statistics().held}
            assert held == {"udp": udp_port + 7, "tcp": tcp_port + 7}
        else:
            assert mapping.external.port == udp_port and mapping.protocol == "nat-pmp"
            assert record.mapped == 2
            assert {str(a) for a in record.addrs[:2]} == {
                f"/ip4/127.0.0.1/udp/{udp_port}/quic-v1", f"/ip4/127.0.0.1/tcp/{tcp_port}"}
        await client.unmount(mapper)
        nursery.cancel_scope.cancel()
    deletes = {r[1] for r in requests if len(r) == 12 and r[8:] == bytes(4)}
    assert deletes == {1, 2}  # both released on unmount (lifetime 0): UDP and TCP opcodes


async def test_a_connector_tries_the_mapped_rung_first_and_labels_it_mapped() -> None:
    async with nodes(2) as (a, b):
        connector = await a.mount(Connector())
        mapped = [x for x in b.peer_info().addrs if "/tcp/" in str(x)]
        with trio.fail_after(10):
            path = await connector.connect(PeerInfo(b.peer_id, []), mapped=mapped)
        assert path.kind == "mapped" and path.attempts == ("mapped",)


async def test_a_mapping_that_does_not_answer_falls_through_to_the_direct_rung() -> None:
    async with nodes(2) as (a, b):
        connector = await a.mount(Connector(config=ConnectConfig(direct_timeout=2.0)))
        with trio.socket.socket() as closed:  # a port nobody listens on
            await closed.bind(("127.0.0.1", 0))
            dead = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{closed.getsockname()[1]}")
        with trio.fail_after(10):
            path = await connector.connect(b.peer_info(), mapped=[dead])
        assert path.kind == "direct" and path.attempts[-1] == "direct"
        assert path.attempts[0].startswith("mapped: ")


class _Answers(DialBackService):
    """Notes each request it answers and its answer."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: list[tuple[DialBackRequest, object]] = []
        self.first = trio.Event()

    async def _answer(self, node: MeshNode, peer: object, req: DialBackRequest,
                      stream: object) -> object:
        answer = await super()._answer(node, peer, req, stream)  # type: ignore[arg-type]
        self.answered.append((req, answer))
        self.first.set()
        return answer


async def test_a_tcp_mapping_elsewhere_than_the_helper_sees_the_node_is_never_dialled() -> None:
    # the gateway claims the external IP 127.0.0.5; the helper sees the node at 127.0.0.1: it
    # refuses the check and dials nothing (neither there nor at 127.0.0.5), nothing is confirmed
    async with (gateway_socket() as (gateway_sock, gateway),
                MeshNode(NodeConfig(listen_ip="127.0.0.1")) as client,
                MeshNode(NodeConfig(listen_ip="127.0.0.2")) as helper_node,
                trio.open_nursery() as nursery):
        nursery.start_soon(fake_gateway, gateway_sock, 0, [], "127.0.0.5")
        helper = await helper_node.mount(_Answers())
        config = PortMapConfig(protocols=(MappingProtocol.NATPMP,), transports=("tcp",),
                               gateway=gateway)
        mapper = await client.mount(PortMapper(config, helpers=[helper_node.peer_info()]))
        with trio.fail_after(20):
            await helper.first.wait()
        request, answer = helper.answered[0]
        assert request.ip == IPv4Address("127.0.0.5") and request.udp_port is None
        assert request.tcp_port == client.listen_endpoint("tcp").port
        assert isinstance(answer, ErrorResponse) and answer.code is ErrorCode.FORBIDDEN_TARGET
        assert helper.dialled == 0 and mapper.confirmed() == []
        await client.unmount(mapper)
        nursery.cancel_scope.cancel()


async def test_a_gateway_that_refuses_pcp_mappings_is_asked_by_nat_pmp_next() -> None:
    async def pcp_refusing(sock: trio.socket.SocketType, requests: list[bytes]) -> None:
        while True:
            data, addr = await sock.recvfrom(1200)
            if data[0] != 2:  # NAT-PMP: as a router would
                requests.append(data)
                internal = int.from_bytes(data[4:6], "big") if len(data) == 12 else 0
                reply = (struct.pack("!BBHI4s", 0, 128, 0, 5, IPv4Address("127.0.0.1").packed)
                         if data == b"\x00\x00" else
                         struct.pack("!BBHIHHI", 0, 128 + data[1], 0, 5, internal, internal,
                                     int.from_bytes(data[8:12], "big")))
            elif data[1] == 0:  # PCP ANNOUNCE: answered, so PCP looks spoken
                reply = bytes((2, 0x80, 0, 0)) + bytes(4) + (5).to_bytes(4, "big") + bytes(12)
            else:  # PCP MAP: NOT_AUTHORIZED
                reply = bytes((2, 0x81, 0, 2)) + bytes(8) + bytes(12) + data[24:60]
            await sock.sendto(reply, addr)

    requests: list[bytes] = []
    async with (gateway_socket() as (gateway_sock, gateway),
                MeshNode(NodeConfig(listen_ip="127.0.0.1")) as client,
                MeshNode(NodeConfig(listen_ip="127.0.0.2")) as helper_node,
                trio.open_nursery() as nursery):
        nursery.start_soon(pcp_refusing, gateway_sock, requests)
        await helper_node.mount(ProbeHelperService())
        config = PortMapConfig(protocols=(MappingProtocol.PCP, MappingProtocol.NATPMP),
                               transports=("udp",), gateway=gateway)
        mapper = await client.mount(PortMapper(config, helpers=[helper_node.peer_info()]))
        with trio.fail_after(15):
            mapping = await mapper.wait_confirmed("udp")
        assert mapping.protocol == "nat-pmp"
        assert mapper.statistics().protocol == "nat-pmp"
        await client.unmount(mapper)
        nursery.cancel_scope.cancel()


async def test_node_config_port_mapping_mounts_a_mapper_that_confirms_its_mappings() -> None:
    requests: list[bytes] = []
    async with (gateway_socket() as (gateway_sock, gateway),
                MeshNode(NodeConfig(listen_ip="127.0.0.2")) as helper_node,
                trio.open_nursery() as nursery):
        nursery.start_soon(fake_gateway, gateway_sock, 0, requests)
        await helper_node.mount(ProbeHelperService())
        config = PortMapConfig(protocols=(MappingProtocol.NATPMP,), gateway=gateway,
                               verify_timeout=4.0)
        async with MeshNode(NodeConfig(listen_ip="127.0.0.1", port_mapping=config,
                                       port_mapping_helpers=(helper_node.peer_info(),))
                            ) as client:
            mapper = client.port_mapper
            assert mapper is not None and mapper.config is config
            with trio.fail_after(20):
                mapping = await mapper.wait_confirmed("udp")
            assert mapping.external.port == client.listen_endpoint("udp").port
        nursery.cancel_scope.cancel()
    assert any(len(r) == 12 and r[8:] == bytes(4) for r in requests)  # released on exit


async def test_port_mapping_is_off_by_default_and_needs_helpers() -> None:
    async with MeshNode(NodeConfig(listen_ip="127.0.0.1")) as node:
        assert node.port_mapper is None
    with pytest.raises(ConfigError, match="port_mapping_helpers"):
        NodeConfig(port_mapping=True)
    NodeConfig(port_mapping=True, mesh=MeshConfig())  # the mesh confirms its mappings


async def test_in_a_mesh_reflectors_confirm_mappings_and_the_published_record_has_them() -> None:
    """No port_mapping_helpers: the mesh's reflectors (confirmed public, probe helpers) check
    the mapping, and the record the mesh publishes in the DHT carries it."""
    public = MeshConfig(reachability=Reachability.PUBLIC)
    requests: list[bytes] = []
    async with gateway_socket() as (gateway_sock, gateway), trio.open_nursery() as nursery:
        nursery.start_soon(fake_gateway, gateway_sock, 0, requests)
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(
                MeshNode(NodeConfig(listen_ip="127.0.1.1", mesh=public)))
            bootstrap = (str(first.addrs[0]),)
            for network in (2, 3):
                await stack.enter_async_context(MeshNode(NodeConfig(
                    listen_ip=f"127.0.{network}.1", bootstrap=bootstrap, mesh=public)))
            config = PortMapConfig(protocols=(MappingProtocol.NATPMP,), gateway=gateway,
                                   verify_timeout=4.0)
            client = await stack.enter_async_context(MeshNode(NodeConfig(
                listen_ip="127.0.0.1", bootstrap=bootstrap, mesh=public, port_mapping=config)))
            mapper = client.port_mapper
            assert mapper is not None
            with trio.fail_after(90):
                mapping = await mapper.wait_confirmed("udp")
                await mapper.wait_confirmed("tcp")
                for _ in range(200):  # each turn waits for the first node's next mesh look
                    if (await first.mesh.lookup(client.peer_id)).mapped == 2:
                        break
                    await first.mesh.wait_reconciled()
            assert mapping.external.port == client.listen_endpoint("udp").port
            assert (await first.mesh.lookup(client.peer_id)).mapped == 2
            assert client.mesh.authority.current().record.mapped == 2
        nursery.cancel_scope.cancel()
