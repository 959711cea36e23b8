"""The in-memory QUIC handshake a transport runs once per process (`_libp2p.quic.warmup`)."""

from __future__ import annotations

from libp2p.crypto.ed25519 import create_new_key_pair
from qh3.quic.configuration import QuicConfiguration

from meshnat._libp2p.quic.tls import configuration, libp2p_certificate
from meshnat._libp2p.quic.warmup import _handshake, warm_up


def configs() -> tuple[QuicConfiguration, QuicConfiguration]:
    certificate = libp2p_certificate(create_new_key_pair().private_key)
    return tuple(configuration(certificate, is_client=client, max_stream_data=1 << 20,
                               max_data=4 << 20, idle_timeout=10.0)
                 for client in (True, False))  # type: ignore[return-value]


def test_the_handshake_completes_in_memory_on_both_sides() -> None:
    client, server = configs()
    assert _handshake(client, server) is True


def test_a_process_warms_up_once() -> None:
    client, server = configs()
    warm_up(client, server)  # ran here or by a transport before
    assert warm_up(client, server) is False
