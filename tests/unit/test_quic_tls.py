"""libp2p TLS on qh3, sans-IO: both sides prove their identity, a forged certificate is refused.

Two qh3 connections exchange datagrams in memory (no sockets, a fixed clock).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from qh3.quic import events

from meshnat._libp2p.quic.core import Libp2pQuicConnection
from meshnat._libp2p.quic.tls import configuration, libp2p_certificate
from tests.support.impostor import forged_certificate

LIMITS = {"max_stream_data": 1 << 20, "max_data": 1 << 22, "idle_timeout": 30.0}
CLIENT_ADDR, SERVER_ADDR = ("127.0.0.1", 1), ("127.0.0.1", 2)


def genuine(pair: KeyPair) -> tuple[bytes, bytes]:
    return libp2p_certificate(pair.private_key)


def forged(victim: KeyPair) -> tuple[bytes, bytes]:
    """A certificate naming `victim`'s key with a garbage signature (no victim secret used)."""
    config = forged_certificate(victim.public_key)
    return (config.certificate.public_bytes(serialization.Encoding.DER),
            config.private_key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))


def handshake(client_cert: tuple[bytes, bytes], server_cert: tuple[bytes, bytes]
              ) -> tuple[Libp2pQuicConnection, Libp2pQuicConnection]:
    client = Libp2pQuicConnection(configuration=configuration(client_cert, is_client=True,
                                                              **LIMITS))
    client.connect(SERVER_ADDR, now=0.0)
    server: Libp2pQuicConnection | None = None
    for _ in range(8):
        for data, _ in client.datagrams_to_send(0.0):
            if server is None:
                server = Libp2pQuicConnection(
                    configuration=configuration(server_cert, is_client=False, **LIMITS),
                    original_destination_connection_id=data[6:6 + data[5]])
            server.receive_datagram(data, CLIENT_ADDR, 0.0)
        assert server is not None
        for data, _ in server.datagrams_to_send(0.0):
            client.receive_datagram(data, SERVER_ADDR, 0.0)
    assert server is not None
    return client, server


def completed(conn: Libp2pQuicConnection) -> bool:
    seen = []
    while (event := conn.next_event()) is not None:
        seen.append(event)
    return any(isinstance(e, events.HandshakeCompleted) for e in seen) and \
        not any(isinstance(e, events.ConnectionTerminated) for e in seen)


def test_both_sides_prove_their_libp2p_identity() -> None:
    alice, bob = create_new_key_pair(), create_new_key_pair()
    client, server = handshake(genuine(alice), genuine(bob))
    assert completed(client) and completed(server)
    assert client.proven_peer == ID.from_pubkey(bob.public_key)
    assert server.proven_peer == ID.from_pubkey(alice.public_key)


def test_a_server_refuses_a_client_with_a_forged_certificate() -> None:
    victim, bob = create_new_key_pair(), create_new_key_pair()
    _, server = handshake(forged(victim), genuine(bob))
    assert not completed(server)
    assert server.proven_peer is None


def test_a_client_refuses_a_server_with_a_forged_certificate() -> None:
    alice, victim = create_new_key_pair(), create_new_key_pair()
    client, server = handshake(genuine(alice), forged(victim))
    assert not completed(client)
    assert client.proven_peer is None
    assert not completed(server)


def test_streams_flow_after_the_mutual_handshake() -> None:
    client, server = handshake(genuine(create_new_key_pair()), genuine(create_new_key_pair()))
    stream = client._open_stream()
    client.send_stream_data(stream, b"hello", end_stream=True)
    for data, _ in client.datagrams_to_send(0.1):
        server.receive_datagram(data, CLIENT_ADDR, 0.1)
    received = [e for e in iter(server.next_event, None)
                if isinstance(e, events.StreamDataReceived)]
    assert b"".join(e.data for e in received) == b"hello" and received[-1].end_stream


def test_an_unvalidated_address_gets_at_most_three_times_what_it_sent() -> None:
    """A client's first flight from a (possibly spoofed) address, never answered: everything
    the server sends, retransmissions included, stays within 3x the bytes it received."""
    client = Libp2pQuicConnection(configuration=configuration(
        genuine(create_new_key_pair()), is_client=True, **LIMITS))
    client.connect(SERVER_ADDR, now=0.0)
    flight = [data for data, _ in client.datagrams_to_send(0.0)]
    server = Libp2pQuicConnection(
        configuration=configuration(genuine(create_new_key_pair()), is_client=False, **LIMITS),
        original_destination_connection_id=flight[0][6:6 + flight[0][5]])
    for data in flight:
        server.receive_datagram(data, CLIENT_ADDR, 0.0)
    sent = sum(len(d) for d, _ in server.datagrams_to_send(0.0))
    now = 0.0
    for _ in range(30):  # the loss-recovery timer fires again and again
        timer = server.get_timer()
        if timer is None:
            break
        now = max(now, timer)
        server.handle_timer(now)
        sent += sum(len(d) for d, _ in server.datagrams_to_send(now))
    assert 0 < sent <= 3 * sum(map(len, flight))
    assert server.withheld > 0
