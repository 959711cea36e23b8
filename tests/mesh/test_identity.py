"""One identity rule: a peer id counts only when a checked signature proved it.

Each attack holds only its own key and the victim's public key (an Ed25519 peer id contains
it): a QUIC certificate carrying the victim's key with a garbage signature, in both directions,
and a host that speaks only /plaintext/2.0.0. Every one must be refused before any service sees
the claimed identity.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import multiaddr
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.transport.quic.exceptions import QUICPeerVerificationError
from libp2p.transport.quic.security import CertificateGenerator

from meshnat import MeshNode, _libp2p
from meshnat._libp2p import INetStream, TProtocol
from meshnat._libp2p.identity import proven_peer_id
from meshnat.chat.service import ChatService, Heard
from meshnat.errors import MeshNatError, PeerUnavailable
from meshnat.relay import RelayClient, RelayService
from meshnat.tunnel import TunnelService
from tests.support.fake_reflectors import LOOPBACK, nodes
from tests.support.impostor import (
    forged_certificate,
    plaintext_host,
    quic_certificates_claiming,
)

WHO = TProtocol("/meshnat-test/who/1.0.0")


def quic_info(node: MeshNode, peer_id: ID | None = None) -> PeerInfo:
    """`node` reached at its QUIC address only, under `peer_id` (its own by default)."""
    addrs = [a.decapsulate(multiaddr.Multiaddr(f"/p2p/{node.peer_id}"))
             for a in node.addrs if "/quic-v1" in str(a)]
    return PeerInfo(peer_id or node.peer_id, addrs)


def tcp_info(node: MeshNode) -> PeerInfo:
    addrs = [a.decapsulate(multiaddr.Multiaddr(f"/p2p/{node.peer_id}"))
             for a in node.addrs if "/tcp/" in str(a)]
    return PeerInfo(node.peer_id, addrs)


class Who:
    """A stream handler that records which peer id each stream came from."""

    def __init__(self, node: MeshNode) -> None:
        self.peers: list[ID] = []
        node.host.set_stream_handler(WHO, _libp2p.guarded_handler("who", self._handle))

    async def _handle(self, stream: INetStream) -> None:
        self.peers.append(_libp2p.stream_peer(stream))
        await stream.close()


@asynccontextmanager
async def impostor_of(victim_public: object) -> AsyncIterator[MeshNode]:
    """A running node whose QUIC certificate claims `victim_public`'s identity."""
    with quic_certificates_claiming(victim_public):  # type: ignore[arg-type]
        node = MeshNode(replace(LOOPBACK, quic_stack="py-libp2p"))  # whose certificate it forges
        await node.__aenter__()
    try:
        yield node
    finally:
        await node.__aexit__(None, None, None)


async def attempt(coro: object) -> BaseException | None:
    """Await `coro`; the meshnat error it raised, or None if it succeeded."""
    try:
        await coro  # type: ignore[misc]
    except MeshNatError as exc:
        return exc
    return None


def test_a_certificate_proves_only_the_key_that_signed_it() -> None:
    honest = create_new_key_pair()
    genuine = CertificateGenerator().generate_certificate(
        honest.private_key, ID.from_pubkey(honest.public_key))
    assert proven_peer_id(genuine.certificate) == ID.from_pubkey(honest.public_key)
    with pytest.raises(QUICPeerVerificationError):
        proven_peer_id(forged_certificate(honest.public_key).certificate)
    bare_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.now(UTC)
    bare = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(bare_key.public_key()).serial_number(1)
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .sign(bare_key, hashes.SHA256()))
    with pytest.raises(QUICPeerVerificationError):
        proven_peer_id(bare)


async def test_a_forged_quic_certificate_dialling_in_is_refused() -> None:
    victim = create_new_key_pair()
    victim_id = ID.from_pubkey(victim.public_key)
    with trio.fail_after(30):
        async with nodes(1) as (target,), impostor_of(victim.public_key) as impostor:
            who = Who(target)
            failed = await attempt(impostor.open_stream(quic_info(target), WHO, timeout=5))
            assert isinstance(failed, PeerUnavailable | MeshNatError)
            assert victim_id not in who.peers
            assert not target.host.get_network().get_connections(victim_id)


async def test_a_listener_with_a_forged_quic_certificate_is_refused() -> None:
    victim = create_new_key_pair()
    victim_id = ID.from_pubkey(victim.public_key)
    with trio.fail_after(30):
        async with nodes(1) as (dialler,), impostor_of(victim.public_key) as impostor:
            with pytest.raises(PeerUnavailable):
                await dialler.connect(quic_info(impostor, victim_id), timeout=5)
            assert not dialler.host.get_network().get_connections(victim_id)


async def test_a_punched_path_to_a_forged_listener_is_not_adopted() -> None:
    """The punch adopts a path through `dial_quic_from` (from the listen port, TLS checks
    the peer); an impostor answering on the punched endpoint must fail that check."""
    victim = create_new_key_pair()
    victim_id = ID.from_pubkey(victim.public_key)
    with trio.fail_after(30):
        async with nodes(1) as (dialler,), impostor_of(victim.public_key) as impostor:
            with pytest.raises(PeerUnavailable):
                await _libp2p.dial_quic_from(dialler.host, victim_id,
                                             impostor.listen_endpoint("udp"),
                                             dialler.listen_endpoint("udp"))
            assert not dialler.host.get_network().get_connections(victim_id)


async def test_a_forged_peer_cannot_use_a_tunnel_allowed_to_its_victim() -> None:
    victim = create_new_key_pair()
    victim_id = ID.from_pubkey(victim.public_key)
    with trio.fail_after(30):
        async with nodes(1) as (server_node,), impostor_of(victim.public_key) as impostor:
            server = await server_node.mount(TunnelService())
            client = await impostor.mount(TunnelService())
            listener = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listener[0].socket.getsockname()[1]
            server.expose("private", ("127.0.0.1", port), allow={victim_id})
            failed = await attempt(client.open(quic_info(server_node), "private"))
            assert failed is not None
            assert server.statistics().active == 0
            for each in listener:
                await each.aclose()


async def test_a_forged_peer_cannot_post_as_a_chat_member() -> None:
    victim = create_new_key_pair()
    victim_id = ID.from_pubkey(victim.public_key)
    heard: list[Heard] = []
    with trio.fail_after(30):
        async with nodes(1) as (member,), impostor_of(victim.public_key) as impostor:
            await member.mount(ChatService(accept=lambda p: p == victim_id, on_heard=heard.append))
            chat = await impostor.mount(ChatService(accept=lambda p: True, on_heard=print))
            await attempt(impostor.connect(quic_info(member), timeout=5))
            failed = await attempt(chat.say(member.peer_id, "I am the victim"))
            assert failed is not None
    assert heard == []


async def test_a_plaintext_only_peer_is_refused_both_ways() -> None:
    with trio.fail_after(30):
        async with nodes(1) as (node,):
            who = Who(node)
            insecure = plaintext_host()
            async with insecure.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                info = tcp_info(node)
                dial_in = await attempt(_dial(insecure, info))
                assert dial_in is not None
                assert insecure.get_id() not in who.peers
                listen_addrs = insecure.get_addrs()
                with pytest.raises(PeerUnavailable):
                    await node.connect(PeerInfo(insecure.get_id(), listen_addrs), timeout=5)


async def _dial(host: object, info: PeerInfo) -> None:
    with _libp2p.map_peer_errors("plaintext dial", 5), trio.fail_after(5):
        await host.connect(info)  # type: ignore[attr-defined]
        await host.new_stream(info.peer_id, [WHO])  # type: ignore[attr-defined]


async def test_a_relay_circuit_is_secured_end_to_end_by_noise() -> None:
    """Circuits are upgraded by the same swarm upgrader, so Noise proves the far end's key."""
    async with nodes(3) as (relay, listener, dialer):
        await relay.mount(RelayService())
        listener_client = await listener.mount(RelayClient())
        dialer_client = await dialer.mount(RelayClient())
        with trio.fail_after(15):
            await listener_client.reserve(relay.peer_info())
            await dialer_client.dial(relay.peer_info(), listener.peer_id)
        for here, there in ((dialer, listener), (listener, dialer)):
            circuits = [c for c in here.host.get_network().get_connections(there.peer_id)
                        if _libp2p.is_relayed(c)]
            assert circuits
            for circuit in circuits:
                session = circuit.muxed_conn.secured_conn
                assert isinstance(getattr(session, "conn", None), NoiseTransportReadWriter)
                assert session.get_remote_peer() == there.peer_id
