"""PairTable: the pure state of a traversal's port pairs."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from meshnat.endpoint import Endpoint
from meshnat.errors import PairExpired, PairTaken, UnknownPair
from meshnat.traversal.pairs import PairId, PairState, PairTable, parse_ref

PEER = Endpoint(ip_address("198.18.0.21"), 51000)
LAN = Endpoint(ip_address("10.2.0.10"), 51000)
US = Endpoint(ip_address("198.18.0.20"), 40321)


def table() -> PairTable:
    pairs = PairTable("t1", 40321, pair_timeout=20)
    pairs.add_candidate(PEER, now=0)
    pairs.add_candidate(LAN, now=0)
    return pairs


def test_candidates_are_probed_until_an_answer_proves_both_directions() -> None:
    pairs = table()
    assert pairs.to_probe() == [PEER, LAN]
    pairs.sent(PEER, now=1.0)
    pairs.heard(PEER, now=1.1, ack=False)  # their probe: only their direction works
    assert pairs.get(PairId("t1", 1)).state is PairState.PROBING
    pairs.heard(PEER, now=1.25, ack=True, observed=US)  # an answer to ours
    alive = pairs.get(PairId("t1", 1))
    assert alive.state is PairState.ALIVE and alive.local == US
    assert alive.rtt == pytest.approx(0.25) and alive.last_seen == 1.25


def test_an_endpoint_the_peer_did_not_offer_becomes_a_pair_of_its_own() -> None:
    pairs = table()
    other = Endpoint(ip_address("198.18.0.21"), 61234)  # an endpoint-dependent mapping
    pairs.heard(other, now=2, ack=False)
    assert [p.remote for p in pairs.pairs()] == [PEER, LAN, other]
    assert other in pairs.to_probe()


def test_a_pair_is_taken_once_and_only_while_alive() -> None:
    pairs = table()
    with pytest.raises(PairExpired):
        pairs.take(PairId("t1", 2), now=1, use_within=10)  # never answered
    pairs.sent(PEER, now=0.9)
    pairs.heard(PEER, now=1, ack=True)
    taken = pairs.take(PairId("t1", 1), now=2, use_within=10)
    assert taken.state is PairState.TAKEN and taken.deadline == 12
    assert PEER not in pairs.to_probe()  # no more keepalives for it
    with pytest.raises(PairTaken):
        pairs.take(PairId("t1", 1), now=3, use_within=10)
    with pytest.raises(UnknownPair):
        pairs.take(PairId("t1", 9), now=3, use_within=10)


def test_silent_alive_pairs_expire_and_stay_expired() -> None:
    pairs = table()
    pairs.sent(PEER, now=0.9)
    pairs.heard(PEER, now=1, ack=True)
    assert pairs.expire_stale(now=20) == []
    (expired,) = pairs.expire_stale(now=21.5)
    assert expired.state is PairState.EXPIRED
    pairs.heard(PEER, now=22, ack=True)  # too late: the NAT may have mapped it anew
    assert pairs.get(PairId("t1", 1)).state is PairState.EXPIRED


def test_the_table_is_bounded() -> None:
    pairs = PairTable("t2", 1, pair_timeout=20, max_pairs=2)
    for port in range(1, 10):
        pairs.heard(Endpoint(ip_address("198.18.0.1"), port), now=0, ack=False)
    assert len(pairs.pairs()) == 2


def test_a_pair_the_peer_took_counts_once_we_heard_it_even_before_our_answer() -> None:
    pairs = table()
    pairs.heard(PEER, now=1, ack=False)  # the peer's probe arrived; ours not answered yet
    with pytest.raises(PairExpired):
        pairs.take(PairId("t1", 1), now=1, use_within=10)
    assert pairs.take(PairId("t1", 1), now=1, use_within=10, peer_confirmed=True).state \
        is PairState.TAKEN
    with pytest.raises(PairExpired):  # never heard: nothing proves their direction
        pairs.take(PairId("t1", 2), now=1, use_within=10, peer_confirmed=True)


def test_a_dialler_may_take_a_pair_it_heard_the_peer_on_before_our_answer() -> None:
    pairs = table()
    pairs.heard(PEER, now=1, ack=False)  # the peer's probe arrived; ours not answered yet
    assert pairs.take(PairId("t1", 1), now=1, use_within=10, dial_on_heard=True).state \
        is PairState.TAKEN
    other = table()
    with pytest.raises(PairExpired):  # never heard from: nothing proved the endpoint
        other.take(PairId("t1", 1), now=1, use_within=10, dial_on_heard=True)


def test_an_answer_to_no_probe_of_ours_proves_nothing() -> None:
    pairs = table()
    stranger = Endpoint(ip_address("203.0.113.9"), 9999)
    assert pairs.heard(stranger, now=1, ack=True, observed=US)  # a new candidate...
    assert pairs.get(PairId("t1", 3)).state is PairState.PROBING  # ...but not alive, and no RTT
    pairs.heard(PEER, now=1, ack=True)  # nothing was sent to PEER yet either
    assert pairs.get(PairId("t1", 1)).state is PairState.PROBING


def test_an_unknown_pair_id_from_the_control_socket_is_not_quoted_whole() -> None:
    with pytest.raises(UnknownPair) as unknown:
        PairId.parse("x" * 65536)
    assert len(str(unknown.value)) < 100


@pytest.mark.parametrize(("text", "parsed"), [
    ("1a2b3c4d", ("1a2b3c4d", None)),
    ("1a2b3c4d.1", ("1a2b3c4d", 1)),
    ("1a2b3c4d.12", ("1a2b3c4d", 12)),
])
def test_traversal_and_pair_ids_are_parsed_once(text: str,
                                                parsed: tuple[str, int | None]) -> None:
    assert parse_ref(text) == parsed
    if parsed[1] is not None:
        assert str(PairId.parse(text)) == text


@pytest.mark.parametrize("text", ["", "1a2b3c4d.", "1a2b3c4d.x", "1A2B3C4D.1", "1a2b3c4.1",
                                  "1a2b3c4d.1.2", "1a2b3c4d.\u0661", "1a2b3c4d.99999",
                                  "nothing"])
def test_anything_else_is_an_unknown_pair(text: str) -> None:
    with pytest.raises(UnknownPair):
        parse_ref(text)


def test_a_pair_of_another_traversal_is_unknown_here() -> None:
    with pytest.raises(UnknownPair):
        table().get(PairId("t9", 1))
