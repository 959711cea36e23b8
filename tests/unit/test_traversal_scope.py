"""traversal/scope.py: which candidates a peer may name."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from meshnat.endpoint import Endpoint
from meshnat.traversal.scope import ANY, LINK, LOCAL, admit_candidates, peer_scopes, scope_of


@pytest.mark.parametrize(("ip", "scope"), [
    ("127.0.0.1", LOCAL), ("127.9.9.9", LOCAL), ("::1", LOCAL), ("::ffff:127.0.0.1", LOCAL),
    ("169.254.1.1", LINK), ("fe80::1", LINK),
    ("224.0.0.251", None), ("239.255.255.250", None), ("ff02::1", None),
    ("0.0.0.0", None), ("0.1.2.3", None), ("::", None), ("255.255.255.255", None),
    ("240.0.0.1", None),
    ("10.0.0.1", ANY), ("172.16.0.1", ANY), ("192.168.1.1", ANY), ("100.64.0.1", ANY),
    ("198.51.100.1", ANY), ("2001:db8::1", ANY), ("fd00::1", ANY),
])
def test_scope_of(ip: str, scope: str | None) -> None:
    assert scope_of(ip_address(ip)) == scope


def ep(ip: str, port: int = 4001) -> Endpoint:
    return Endpoint(ip_address(ip), port)


def test_a_peer_on_the_internet_may_not_name_local_link_multicast_or_broadcast() -> None:
    public = peer_scopes([IPv4Address("198.51.100.1")])
    named = [ep("127.0.0.1", 22), ep("::1"), ep("169.254.169.254", 80), ep("fe80::1"),
             ep("224.0.0.251", 5353), ep("255.255.255.255"), ep("0.0.0.0"),
             ep("192.168.1.10"), ep("10.1.2.3"), ep("100.64.0.5"), ep("203.0.113.9")]
    kept, refused = admit_candidates(named, public)
    assert kept == tuple(named[7:]) and refused == 7


def test_loopback_and_link_local_candidates_only_from_a_peer_connected_from_there() -> None:
    local = peer_scopes([IPv4Address("127.0.0.1")])
    link = peer_scopes([IPv6Address("fe80::2")])
    assert admit_candidates([ep("127.0.0.1")], local) == ((ep("127.0.0.1"),), 0)
    assert admit_candidates([ep("fe80::1")], local) == ((), 1)
    assert admit_candidates([ep("fe80::1"), ep("127.0.0.1")], link) == ((ep("fe80::1"),), 1)
    assert admit_candidates([ep("224.0.0.1")], local | link) == ((), 1)


def test_this_nodes_own_listen_endpoints_are_refused_and_mapped_addresses_unwrapped() -> None:
    local = peer_scopes([IPv4Address("127.0.0.1")])
    own = [ep("127.0.0.1", 4001)]
    kept, refused = admit_candidates(
        [ep("127.0.0.1", 4001), ep("::ffff:127.0.0.1", 4001), ep("::ffff:127.0.0.1", 4002),
         ep("127.0.0.1", 4002)], local, own)
    assert kept == (ep("127.0.0.1", 4002),) and refused == 2
