"""Inbound QUIC handshakes are bounded in all and per source network (`_libp2p.quic.endpoint`)."""

from __future__ import annotations

from meshnat._libp2p.quic.endpoint import (
    MAX_HANDSHAKES,
    MAX_HANDSHAKES_PER_NETWORK,
    handshake_admitted,
)


def test_one_network_cannot_take_every_handshake_slot() -> None:
    one_host = [("198.51.100.7", 1000 + n) for n in range(MAX_HANDSHAKES_PER_NETWORK)]
    assert not handshake_admitted(one_host, ("198.51.100.7", 5000))
    assert not handshake_admitted(one_host, ("198.51.100.200", 5000))  # same /24
    assert handshake_admitted(one_host, ("203.0.113.9", 5000))
    assert handshake_admitted(one_host[:-1], ("198.51.100.7", 5000))


def test_ipv6_counts_per_56() -> None:
    one_site = [(f"2001:db8:0:1{n:x}::1", 4001) for n in range(MAX_HANDSHAKES_PER_NETWORK)]
    assert not handshake_admitted(one_site, ("2001:db8:0:ff::2", 4001))  # same /56
    assert handshake_admitted(one_site, ("2001:db8:1::2", 4001))


def test_the_total_is_bounded_too() -> None:
    spread = [(f"10.{n}.0.1", 4001) for n in range(MAX_HANDSHAKES)]
    assert not handshake_admitted(spread, ("192.0.2.1", 4001))
    assert handshake_admitted(spread[:-1], ("192.0.2.1", 4001))
