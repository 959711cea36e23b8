"""A QUIC server sends at most three times what an unvalidated address sent (RFC 9000 8.1).

The endpoint hands a connection its datagrams in batches (`receive_many_datagrams`); before
the handshake qh3 feeds them to `receive_datagram` one by one, so each must be counted once.
Sans-IO: two connections in memory, a clock the test sets.
"""

from __future__ import annotations

from libp2p.crypto.ed25519 import create_new_key_pair

from meshnat._libp2p.quic.core import AMPLIFICATION, Libp2pQuicConnection
from meshnat._libp2p.quic.tls import configuration, libp2p_certificate

CLIENT_ADDR, SERVER_ADDR = ("127.0.0.1", 1), ("127.0.0.1", 2)
LIMITS = {"max_stream_data": 1 << 16, "max_data": 1 << 18, "idle_timeout": 30.0}


def _first_flight() -> tuple[Libp2pQuicConnection, list[bytes]]:
    client = Libp2pQuicConnection(configuration=configuration(
        libp2p_certificate(create_new_key_pair().private_key), is_client=True, **LIMITS))
    client.connect(SERVER_ADDR, now=0.0)
    first = [data for data, _ in client.datagrams_to_send(0.0)]
    server = Libp2pQuicConnection(
        configuration=configuration(libp2p_certificate(create_new_key_pair().private_key),
                                    is_client=False, **LIMITS),
        original_destination_connection_id=first[0][6:6 + first[0][5]])
    return server, first


def test_a_batch_before_the_handshake_is_counted_once_and_buys_three_times_its_bytes() -> None:
    server, first = _first_flight()
    server.receive_many_datagrams(first, CLIENT_ADDR, 0.0)
    received = sum(map(len, first))
    assert server.received_bytes == received
    sent = sum(len(data) for data, _ in server.datagrams_to_send(0.0))
    assert 0 < sent <= AMPLIFICATION * received
    assert server.sent_bytes == sent


def test_one_datagram_at_a_time_is_counted_the_same() -> None:
    server, first = _first_flight()
    for data in first:
        server.receive_datagram(data, CLIENT_ADDR, 0.0)
    assert server.received_bytes == sum(map(len, first))
