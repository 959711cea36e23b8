"""`/meshnat/dialback/1.1.0` on loopback: a peer proves this node reachable only by dialling
it, and a peer that only says so proves nothing; a request can aim the dial at no one else (the
`ip` it names is only checked, never dialled); a port mapper's service and a mesh's share one
node."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing

from meshnat import _libp2p
from meshnat._libp2p import INetStream
from meshnat.endpoint import Endpoint
from meshnat.errors import PeerRefused
from meshnat.mesh.dialback import DIALBACK_PROTOCOL, DialBackService
from meshnat.mesh.messages import DialBackProof, DialBackRequest, DialBackResponse
from meshnat.node import MeshNode, NodeConfig
from meshnat.wire import decode, encode


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[MeshNode, MeshNode, DialBackService,
                                             DialBackService]]:
    """An asker on 127.0.1.1 connected to a helper on 127.0.2.1, each with a DialBackService."""
    async with MeshNode(NodeConfig(listen_ip="127.0.1.1")) as asker, \
            MeshNode(NodeConfig(listen_ip="127.0.2.1")) as helper:
        asking = await asker.mount(DialBackService())
        helping = await helper.mount(DialBackService())
        await asker.connect(helper.peer_info())
        yield asker, helper, asking, helping


async def test_a_dial_back_is_witnessed_on_both_transports_and_leaves_no_connection() -> None:
    async with connected() as (asker, helper, asking, helping):
        with trio.fail_after(30):
            assert await asking.dial_back(helper.peer_info()) == {"tcp", "udp"}
            # and the other way, over the connection the asker dialled
            assert await helping.dial_back(asker.peer_info()) == {"tcp", "udp"}
        assert asking.dialled == helping.dialled == 2


class _LateReader(DialBackService):
    """A requester whose handler gets to a proof only once everything else has run (a
    loaded machine): the dialler must wait for it to read the proof before it closes."""

    async def _handle(self, stream: INetStream) -> None:
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        await super()._handle(stream)


async def test_a_proof_read_late_still_counts_on_both_transports() -> None:
    async with MeshNode(NodeConfig(listen_ip="127.0.1.1")) as asker, \
            MeshNode(NodeConfig(listen_ip="127.0.2.1")) as helper:
        asking = await asker.mount(_LateReader())
        await helper.mount(DialBackService())
        await asker.connect(helper.peer_info())
        with trio.fail_after(30):
            assert await asking.dial_back(helper.peer_info()) == {"tcp", "udp"}


class _SourceRecorder(DialBackService):
    """Notes where each proof came from, as the transport saw it."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[str, Endpoint] = {}

    def _proved(self, peer: object, proof: DialBackProof, stream: INetStream) -> None:
        source = _libp2p.remote_endpoint(stream)
        assert source is not None
        self.sources[_libp2p.transport_of(stream)] = source
        super()._proved(peer, proof, stream)  # type: ignore[arg-type]


async def test_a_dial_back_leaves_from_a_fresh_port_never_the_listening_one() -> None:
    # from its listening socket, the QUIC dial-back to a node behind a port-restricted cone
    # NAT has the 5-tuple of the node's own QUIC connection to that socket: the NAT lets it
    # in, and a NATed node counted itself public (the NAT lab's cone sites)
    async with MeshNode(NodeConfig(listen_ip="127.0.1.1")) as asker, \
            MeshNode(NodeConfig(listen_ip="127.0.2.1")) as helper:
        asking = await asker.mount(_SourceRecorder())
        await helper.mount(DialBackService())
        await asker.connect(helper.peer_info())
        with trio.fail_after(30):
            assert await asking.dial_back(helper.peer_info()) == {"tcp", "udp"}
        for transport in ("tcp", "udp"):
            listening = helper.listen_endpoint(transport)
            assert asking.sources[transport].ip == listening.ip
            assert asking.sources[transport].port != listening.port, transport


async def test_a_peer_that_claims_a_dial_back_it_never_made_proves_nothing() -> None:
    async with MeshNode(NodeConfig(listen_ip="127.0.1.1")) as asker, \
            MeshNode(NodeConfig(listen_ip="127.0.2.1")) as liar:
        asking = await asker.mount(DialBackService())

        async def lie(stream: INetStream) -> None:
            request = decode(await _libp2p.read_frame(stream), DialBackRequest)
            await _libp2p.write_frame(stream, encode(DialBackResponse(request.txid, True, True)))
            await stream.close()

        with _libp2p.handling(liar.host, DIALBACK_PROTOCOL, "liar", lie), trio.fail_after(30):
            assert await asking.dial_back(liar.peer_info()) == set()


async def test_a_request_naming_another_ip_is_refused_and_nothing_is_dialled() -> None:
    # the `ip` field (a port mapping's external address) is a condition, never a target: a
    # request naming a third party's address makes the helper send it nothing at all
    with socket.socket() as third_party:
        third_party.bind(("127.0.3.1", 0))
        third_party.listen(8)
        third_party.setblocking(False)
        port = third_party.getsockname()[1]
        async with connected() as (asker, helper, asking, helping):
            with trio.fail_after(30):
                with pytest.raises(PeerRefused) as refused:
                    await asking.dial_back(helper.peer_info(), ports={"tcp": port},
                                           ip=IPv4Address("127.0.3.1"))
                assert refused.value.code == "forbidden-target"
                assert helping.dialled == 0
                # the same request naming the address the helper sees it at is dialled there
                tcp_port = asker.listen_endpoint("tcp").port
                assert await asking.dial_back(helper.peer_info(), ports={"tcp": tcp_port},
                                              ip=IPv4Address("127.0.1.1")) == {"tcp"}
            assert helping.dialled == 1
        with pytest.raises(BlockingIOError):  # nobody ever connected to the third party
            third_party.accept()


async def test_requests_from_one_network_share_its_budget_and_beyond_it_nothing_is_dialled(
        ) -> None:
    # burst 2: two requests from 127.0.1.1 use it up, and 127.0.1.2 (the same /24, another
    # peer) is refused before anything is dialled
    async with MeshNode(NodeConfig(listen_ip="127.0.1.1")) as asker, \
            MeshNode(NodeConfig(listen_ip="127.0.1.2")) as neighbour, \
            MeshNode(NodeConfig(listen_ip="127.0.2.1")) as helper:
        helping = await helper.mount(DialBackService(rate=0.001, burst=2))
        with trio.fail_after(30):
            for node in (asker, neighbour):
                await node.connect(helper.peer_info())
            asking = await asker.mount(DialBackService())
            ports = {"tcp": asker.listen_endpoint("tcp").port}
            for _ in range(2):
                assert await asking.dial_back(helper.peer_info(), ports=ports) == {"tcp"}
            neighbouring = await neighbour.mount(DialBackService())
            with pytest.raises(PeerRefused) as refused:
                await neighbouring.dial_back(helper.peer_info())
        assert refused.value.code == "rate-limited" and helping.dialled == 2


async def test_a_port_mappers_service_and_a_meshs_share_one_node() -> None:
    # a PortMapper mounts a DialBackService that answers no one beside the mesh's: the proofs
    # of either one's requests arrive at whichever handler is installed, and requests from
    # others are answered while an answering service is mounted
    async with MeshNode(NodeConfig(listen_ip="127.0.1.1")) as asker, \
            MeshNode(NodeConfig(listen_ip="127.0.2.1")) as helper:
        mesh = await asker.mount(DialBackService())
        mapper = await asker.mount(DialBackService(answers=False))
        helping = await helper.mount(DialBackService())
        await asker.connect(helper.peer_info())
        with trio.fail_after(60):
            assert await mapper.dial_back(helper.peer_info()) == {"tcp", "udp"}
            assert await mesh.dial_back(helper.peer_info()) == {"tcp", "udp"}
            assert await helping.dial_back(asker.peer_info()) == {"tcp", "udp"}
            await asker.unmount(mesh)
            assert await mapper.dial_back(helper.peer_info()) == {"tcp", "udp"}
            with pytest.raises(PeerRefused) as refused:
                await helping.dial_back(asker.peer_info())
        assert refused.value.code == "unavailable"
        assert mesh.dialled == 2 and mapper.dialled == 0
