"""The mesh's pure decisions: reachability, reflectors, relays, dials, republishing, the DHT
record store's bounds and the record validator."""

from __future__ import annotations

import time
from ipaddress import ip_address

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from multiaddr import Multiaddr

from meshnat._libp2p import ID
from meshnat._libp2p.dht import RecordValidator, record_key
from meshnat.endpoint import Endpoint
from meshnat.errors import MalformedMessage
from meshnat.mesh.addresses import Observed, observed_addrs
from meshnat.mesh.autorelay import AutoRelay, RelayOption
from meshnat.mesh.messages import DialBackProof, DialBackRequest, DialBackResponse
from meshnat.mesh.peers import Membership
from meshnat.mesh.publishing import Republisher
from meshnat.mesh.reachability import Reachability, ReachabilityTracker
from meshnat.mesh.reflectors import choose_reflectors
from meshnat.records import AddressRecord, sign_record
from meshnat.records.slots import RecordSlots
from meshnat.wire import decode, encode, new_txid


def test_reachability_needs_a_witnessed_dial_back_and_two_networks_to_be_private() -> None:
    tracker = ReachabilityTracker(confirmations=1, refutations=2, ttl=100.0)
    assert tracker.status(0.0) is Reachability.UNKNOWN
    tracker.record("10.0.0.0/24", False, 1.0)
    assert tracker.status(1.0) is Reachability.UNKNOWN  # one network is not enough
    tracker.record("10.0.1.0/24", False, 2.0)
    assert tracker.status(2.0) is Reachability.PRIVATE
    tracker.record("10.0.2.0/24", True, 3.0)
    assert tracker.status(3.0) is Reachability.PUBLIC
    assert tracker.status(200.0) is Reachability.UNKNOWN  # results expire


def test_reachability_asks_one_peer_per_network_and_not_again_too_soon() -> None:
    tracker = ReachabilityTracker(retry=30.0, ttl=100.0)
    candidates = {"a": "net1", "b": "net1", "c": "net2", "d": "net3"}
    assert tracker.to_ask(candidates, 0.0, count=5) == ["a", "c", "d"]
    assert tracker.to_ask(candidates, 10.0, count=5) == ["b"]  # a was asked just now
    tracker.record("net1", True, 11.0)
    assert tracker.to_ask(candidates, 45.0, count=5) == ["c", "d"]  # net1 is fresh
    forced = ReachabilityTracker(forced=Reachability.PRIVATE)
    assert forced.to_ask(candidates, 0.0) == [] and forced.status(0.0) is Reachability.PRIVATE


def test_reflectors_are_one_per_network_and_kept_while_they_stay() -> None:
    candidates = {"a": "n1", "b": "n1", "c": "n2", "d": "n3", "e": "n4"}
    assert choose_reflectors([], candidates, count=3) == ["a", "c", "d"]
    assert choose_reflectors(["e", "b"], candidates, count=3) == ["e", "b", "c"]
    del candidates["e"]
    assert choose_reflectors(["e", "b", "c"], candidates, count=3) == ["b", "c", "d"]


def test_autorelay_holds_two_on_distinct_networks_and_backs_off_refusals() -> None:
    relay = AutoRelay(count=2, refusal_backoff=3600.0, failure_backoff=60.0)
    options = [RelayOption("slow", "n1", 0.3), RelayOption("fast", "n1", 0.1),
               RelayOption("far", "n2", 0.5), RelayOption("other", "n3", 0.4)]
    assert [o.peer for o in relay.to_reserve(options, 0.0)] == ["fast", "other"]
    relay.reserved(options[1])
    relay.refused("other", 1.0)
    assert [o.peer for o in relay.to_reserve(options, 2.0)] == ["far"]
    relay.failed("far", 2.0)
    assert relay.to_reserve(options, 3.0) == []  # slow shares fast's network
    assert [o.peer for o in relay.to_reserve(options, 63.0)] == ["far"]
    relay.failed("far", 63.0)
    assert [o.peer for o in relay.to_reserve(options, 3602.0)] == ["other"]
    assert relay.to_drop([o for o in options if o.peer != "fast"]) == ["fast"]
    assert relay.held == {}


def test_autorelay_counts_reservations_under_way_so_a_better_candidate_starts_no_third() -> None:
    # test_automesh's relay test once held 3: b's reservation was slow, c's RTT was measured
    # meanwhile and ranked it first, and c was tried beside b
    relay = AutoRelay(count=2)
    first = [RelayOption("a", "n1", 1.0), RelayOption("b", "n2", 1.0)]
    assert [o.peer for o in relay.to_reserve(first, 0.0)] == ["a", "b"]
    relay.reserved(first[0])  # b's is still under way
    better = [*first, RelayOption("c", "n3", 0.01), RelayOption("d", "n2", 0.02)]
    assert relay.to_reserve(better, 1.0) == []
    relay.reserved(first[1])
    assert set(relay.held) == {"a", "b"} and relay.pending == {}
    relay.to_drop([o for o in better if o.peer != "b"])  # b leaves: the best replaces it
    assert [o.peer for o in relay.to_reserve(better, 2.0)] == ["c"]
    relay.abandoned("c")  # cancelled with no answer: free to try again
    assert [o.peer for o in relay.to_reserve(better, 3.0)] == ["c"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pick", "ok", "refused", "failed", "abandoned"]),
                          st.integers(0, 5), st.floats(0.0, 1.0)), max_size=40))
def test_autorelay_never_holds_or_tries_more_than_count_on_distinct_networks(
        steps: list[tuple[str, int, float]]) -> None:
    relay = AutoRelay(count=2, refusal_backoff=10.0, failure_backoff=1.0)
    under_way: dict[str, RelayOption] = {}
    for now, (step, index, rtt) in enumerate(steps):
        options = [RelayOption(f"p{i}", f"n{i // 2}", rtt if i == index else 0.5)
                   for i in range(6)]
        peer = f"p{index}"
        if step == "pick":
            under_way.update((o.peer, o) for o in relay.to_reserve(options, float(now)))
        elif peer in under_way:
            option = under_way.pop(peer)
            if step == "ok":
                relay.reserved(option)
            elif step == "abandoned":
                relay.abandoned(peer)
            else:
                getattr(relay, step)(peer, float(now))
        taken = [*relay.held.values(), *relay.pending.values()]
        assert len(taken) <= 2 and len(set(taken)) == len(taken)
        assert set(relay.pending) == set(under_way)


def test_a_peer_is_reached_at_the_ips_it_is_seen_at_never_at_the_ones_it_claims() -> None:
    claimed = [Multiaddr("/ip4/10.0.0.5/tcp/4001"), Multiaddr("/ip4/10.0.0.5/udp/4001/quic-v1"),
               Multiaddr("/ip4/10.0.0.5/udp/4002"), Multiaddr("/ip6/fd00::5/tcp/4001")]
    # behind a NAT: its own LAN addresses, seen from its router's public IP
    inbound = Observed("udp", Endpoint.parse("198.18.7.10:4001"), dialled=False)
    assert [str(a) for a in observed_addrs(claimed, [inbound])] == [
        "/ip4/198.18.7.10/tcp/4001", "/ip4/198.18.7.10/udp/4001/quic-v1"]
    dialled = Observed("tcp", Endpoint.parse("198.18.3.10:5000"), dialled=True)
    assert [str(a) for a in observed_addrs([], [dialled, inbound])] == [
        "/ip4/198.18.3.10/tcp/5000"]  # where it was dialled; an inbound source is no listener
    assert observed_addrs(claimed, []) == []  # not connected: nothing to go by


def test_membership_spreads_over_networks_and_backs_off_failed_dials() -> None:
    members = Membership(target=3, backoff=10.0)
    known = {"a": "n1", "b": "n1", "c": "n2", "d": "n3"}
    assert members.to_dial(known, set(), 0.0) == ["a", "c", "d"]
    assert members.to_dial(known, {"a"}, 0.0) == ["c", "d"]
    members.dialled("c", False, 0.0)
    assert members.to_dial(known, {"a"}, 5.0) == ["d", "b"]
    assert members.to_dial(known, {"a"}, 11.0) == ["c", "d"]
    assert members.to_dial(known, {"a", "b", "c"}, 11.0) == []


def test_republisher_publishes_on_change_periodically_and_retries() -> None:
    plan = Republisher(interval=100.0, retry=5.0)
    assert plan.due(1, 0.0)
    plan.published(1, 0.0, stored=True)
    assert not plan.due(1, 50.0) and plan.due(2, 50.0) and plan.due(1, 100.0)
    plan.published(2, 60.0, stored=False)
    assert not plan.due(2, 62.0) and plan.due(2, 65.0)


def test_record_slots_bound_senders_and_networks_until_records_expire() -> None:
    slots = RecordSlots(total=4, per_peer=2, per_network=3)
    assert slots.admit(b"k1", "p1", "n1", 100.0, 0.0)
    assert slots.admit(b"k2", "p1", "n1", 100.0, 0.0)
    assert not slots.admit(b"k3", "p1", "n1", 100.0, 0.0) and slots.last_refusal == "peer"
    assert slots.admit(b"k1", "p9", "n9", 200.0, 0.0)  # a held key is renewed for free
    assert slots.admit(b"k3", "p2", "n1", 100.0, 0.0)
    assert not slots.admit(b"k4", "p3", "n1", 100.0, 0.0)  # the network's share
    assert slots.expire(150.0) == [b"k2", b"k3"] and len(slots) == 1
    assert slots.admit(b"k4", "p3", "n1", 300.0, 150.0)


def _signed(seq: int, key_pair: object = None) -> tuple[ID, bytes]:
    pair = key_pair or create_new_key_pair()
    peer = ID.from_pubkey(pair.public_key)  # type: ignore[attr-defined]
    record = AddressRecord(peer_id=peer, seq=seq, addrs=(), issued_at=int(time.time()),
                           ttl=600)
    return peer, sign_record(pair.private_key, record).data  # type: ignore[attr-defined]


def test_record_keys_fit_find_node_and_the_validator_picks_the_newest_valid_one() -> None:
    pair = create_new_key_pair()
    peer, old = _signed(1, pair)
    _, new = _signed(2, pair)
    _, foreign = _signed(9)
    key = record_key(peer)
    assert len(key.encode()) == 47 and key.startswith("/meshnat/")
    validator = RecordValidator(RecordSlots())
    validator.validate(key, new)
    for bad in (foreign, b"\x00garbage"):  # another peer's record, or none at all
        try:
            validator.validate(key, bad)
        except Exception as exc:
            assert type(exc).__module__.startswith("meshnat")
        else:
            raise AssertionError("validate accepted a record that does not belong there")
    assert validator.select(key, [old, new]) == 1
    assert validator.select(key, [b"junk", foreign, old]) == 2  # never raises
    assert validator.select(key, [b"junk"]) == 0


def test_dial_back_messages_round_trip() -> None:
    for message in (DialBackRequest(new_txid(), 4001, None), DialBackRequest(new_txid(), None, 9),
                    DialBackRequest(new_txid(), 4001, None, ip_address("198.18.0.20")),
                    DialBackRequest(new_txid(), 4001, None, ip_address("2001:db8::1")),
                    DialBackResponse(new_txid(), True, None), DialBackProof(new_txid())):
        assert decode(encode(message), type(message)) == message


@pytest.mark.parametrize("raw", [b"", bytes(3), bytes(5), bytes(15), bytes(17), "10.0.0.1", 4])
def test_a_dial_back_request_ip_of_any_other_size_or_type_is_malformed(raw: object) -> None:
    frame = cbor2.dumps({0: 1, 1: int(DialBackRequest.TYPE), 2: bytes(16), 8: 4001, 12: raw})
    with pytest.raises(MalformedMessage):
        decode(frame, DialBackRequest)
