"""`/meshnat/dialback/1.0.0` on loopback: a peer proves this node reachable only by dialling
it, and a peer that only says so proves nothing."""

from __future__ import annotations

import trio
import trio.testing

from meshnat import _libp2p
from meshnat._libp2p import INetStream
from meshnat.endpoint import Endpoint
from meshnat.mesh.dialback import DIALBACK_PROTOCOL, DialBackService
from meshnat.mesh.messages import DialBackProof, DialBackRequest, DialBackResponse
from meshnat.node import MeshNode, NodeConfig
from meshnat.wire import decode, encode


async def test_a_dial_back_is_witnessed_on_both_transports_and_leaves_no_connection() -> None:
    async with MeshNode(NodeConfig(listen_ip="127.0.1.1")) as asker, \
            MeshNode(NodeConfig(listen_ip="127.0.2.1")) as helper:
        asking = await asker.mount(DialBackService())
        helping = await helper.mount(DialBackService())
        await asker.connect(helper.peer_info())
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
