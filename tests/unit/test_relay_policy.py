"""Relay ranking: reachable only; public first; then lower RTT; stable otherwise."""

from __future__ import annotations

from libp2p.crypto.ed25519 import create_new_key_pair

from meshnat._libp2p import ID, PeerInfo, parse_multiaddr
from meshnat.relay import RelayClient
from meshnat.relay.policy import HopLimits, RelayCandidate, rank_relays


def test_unreachable_relays_are_dropped_and_the_rest_ranked_by_reachability_then_rtt() -> None:
    ranked = rank_relays([
        RelayCandidate("slow", 0.200), RelayCandidate("dead", None, public=True),
        RelayCandidate("natted", 0.001, public=False), RelayCandidate("fast", 0.010),
        RelayCandidate("public", 0.300, public=True), RelayCandidate("tie", 0.010),
    ])
    assert [c.name for c in ranked] == ["public", "fast", "tie", "slow", "natted"]


def test_no_candidates_no_ranking() -> None:
    assert rank_relays([]) == [] == rank_relays([RelayCandidate("dead", None)])


def hop(**kw: int) -> HopLimits:
    bounds = {"max_reservations": 4, "reservations_per_network": 2, "reservation_ttl": 10,
              "max_circuits": 4, "circuits_per_peer": 1, "circuits_per_network": 2,
              "max_hop_streams": 4, "hop_streams_per_peer": 1, "hop_streams_per_network": 2,
              **kw}
    return HopLimits(**bounds)


def test_reservations_are_bounded_per_network_refreshed_in_place_and_freed_on_expiry() -> None:
    h = hop()
    assert h.reserve("a", "n1", now=0) and h.reserve("b", "n1", now=0)
    assert not h.reserve("c", "n1", now=0)                    # n1 holds its share
    assert h.reserve("a", "n1", now=5)                        # a refresh takes no new slot
    assert h.reserve("d", "n2", now=5) and h.reserve("e", "n3", now=5)
    assert not h.reserve("f", "n4", now=5)                    # 4 in total
    assert h.reserve("c", "n1", now=10)                       # b expired at 10, a lives to 15
    stats = h.statistics()
    assert stats.reservations == 4
    assert stats.reservations_refused == {"network": 1, "total": 1}


def test_a_released_reservation_frees_its_slot_and_a_new_one_is_a_fresh_slot() -> None:
    h = hop()
    assert h.reserve("a", "n1", now=0) and h.reserve("b", "n1", now=0)
    assert h.release("a") and not h.release("a")              # once; then it holds none
    assert not h.release("nobody")
    assert h.reserve("c", "n1", now=1)                        # a's slot, at once
    assert not h.reserve("a", "n1", now=1)                    # back: n1 holds its share again
    assert h.release("b") and h.reserve("a", "n1", now=2)     # a fresh slot, expiring at 12
    assert h.reserve("d", "n1", now=12)                       # a (and c) expired by 12
    assert h.statistics().reservations == 1


def test_circuits_and_hop_streams_are_bounded_per_peer_and_network() -> None:
    h = hop()
    first = h.open_circuit("a", "n1")
    assert first is not None and h.open_circuit("a", "n1") is None          # per peer
    assert h.open_circuit("b", "n1") is not None and h.open_circuit("c", "n1") is None
    assert h.open_circuit("d", "n2") is not None
    h.close_circuit(first)
    assert h.open_circuit("c", "n1") is not None
    stream = h.open_stream("a", "n1")
    assert stream is not None and h.open_stream("a", "n1") is None
    h.close_stream(stream)
    assert h.statistics().circuits == 3 and h.statistics().streams == 0


def test_a_circuit_address_names_the_relay_once_whether_or_not_its_address_did() -> None:
    relay = ID.from_pubkey(create_new_key_pair().public_key)
    target = ID.from_pubkey(create_new_key_pair().public_key)
    want = f"/ip4/127.0.1.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}"
    for given in ("/ip4/127.0.1.1/tcp/4001", f"/ip4/127.0.1.1/tcp/4001/p2p/{relay}"):
        info = PeerInfo(relay, [parse_multiaddr(given)])
        assert str(RelayClient.circuit_addr(info, target)) == want  # identify's addrs end in /p2p
