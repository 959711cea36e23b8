"""Signed address records: signing, verification, and every way a record is refused."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import multiaddr
import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.peer.envelope import seal_record
from libp2p.peer.peer_record import PeerRecord

from meshnat import _libp2p
from meshnat._libp2p import ID, KeyPair
from meshnat._libp2p import records as envelopes
from meshnat.classify.report import NatType
from meshnat.errors import (
    ForgedRecord,
    InvalidRecord,
    MalformedMessage,
    MessageTooLarge,
    RemoteProtocolError,
    StaleRecord,
)
from meshnat.punch.messages import MappingHint
from meshnat.records import AddressRecord, NatSummary, RecordStore, sign_record, verify_record
from meshnat.records.messages import RecordBody
from meshnat.rendezvous.messages import (
    Discover,
    Discovered,
    Register,
    Registered,
    Unregister,
    check_namespace,
)
from meshnat.wire import Message, decode, encode

VECTORS = Path(__file__).parent.parent / "vectors"
NOW = 1_700_000_000
ADDRS = (multiaddr.Multiaddr("/ip4/198.18.0.20/tcp/4001"),
         multiaddr.Multiaddr("/ip4/198.18.0.20/udp/4001/quic-v1"),
         multiaddr.Multiaddr("/ip4/198.18.0.10/tcp/4001/p2p/"
                             "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq/p2p-circuit"))


def key() -> KeyPair:
    return _libp2p.load_or_create_key(None)


def peer_of(pair: KeyPair) -> ID:
    return ID.from_pubkey(pair.public_key)


def record(pair: KeyPair, **changes: object) -> AddressRecord:
    base = AddressRecord(peer_id=peer_of(pair), seq=5, addrs=ADDRS, issued_at=NOW, ttl=600,
                         nat=NatSummary(NatType.PORT_RESTRICTED_CONE,
                                        MappingHint.ENDPOINT_INDEPENDENT),
                         services=("chat",), name="alice")
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_signed_record_verifies_and_says_what_was_signed() -> None:
    pair = key()
    signed = sign_record(pair.private_key, record(pair))
    got = verify_record(signed.data, now=NOW + 10)
    assert got == record(pair)
    assert got.direct_addrs() == list(ADDRS[:2]) and got.relay_addrs() == [ADDRS[2]]
    assert got.expires_at == NOW + 600
    assert got.to_json()["nat_type"] == "port-restricted-cone"


def test_a_record_signed_by_another_key_is_forged() -> None:
    alice, mallory = key(), key()
    with pytest.raises(ForgedRecord, match="cannot sign"):
        sign_record(mallory.private_key, record(alice))
    # the same attack done by hand: Mallory's envelope around a body naming Alice
    body = RecordBody(bytes(16), envelopes.encode_peer_record(peer_of(alice), 5, ADDRS), NOW,
                      600)
    data = envelopes.seal(mallory.private_key, encode(body))
    with pytest.raises(ForgedRecord, match="signed by"):
        verify_record(data, now=NOW)


def test_a_tampered_record_fails_its_signature() -> None:
    pair = key()
    data = bytearray(sign_record(pair.private_key, record(pair)).data)
    index = bytes(data).index(b"alice")
    data[index] ^= 0x01  # "alice" -> "`lice": still a valid body, no longer the signed one
    with pytest.raises(ForgedRecord, match="does not verify"):
        verify_record(bytes(data), now=NOW)


def test_a_libp2p_peer_record_signed_by_the_same_key_is_not_a_meshnat_record() -> None:
    pair = key()
    envelope = seal_record(PeerRecord(peer_of(pair), list(ADDRS), 5), pair.private_key)
    with pytest.raises(MalformedMessage, match="payload type"):
        verify_record(envelope.marshal_envelope(), now=NOW)


def test_expired_and_future_records_are_refused() -> None:
    pair = key()
    data = sign_record(pair.private_key, record(pair)).data
    with pytest.raises(StaleRecord, match="expired"):
        verify_record(data, now=NOW + 600)
    with pytest.raises(InvalidRecord, match="ahead"):
        verify_record(data, now=NOW - 3600)


def test_oversized_and_garbage_records_are_refused_before_parsing() -> None:
    with pytest.raises(MessageTooLarge):
        verify_record(bytes(envelopes.MAX_ENVELOPE_SIZE + 1), now=NOW)
    with pytest.raises(MalformedMessage):
        verify_record(b"\x0a\x05hello", now=NOW)


def test_a_record_with_trailing_or_unknown_protobuf_fields_is_refused() -> None:
    pair = key()
    data = sign_record(pair.private_key, record(pair)).data
    with pytest.raises(MalformedMessage, match="non-canonical"):
        verify_record(data + b"\x78\x01", now=NOW)  # field 15, varint 1


def test_too_many_addresses_cannot_be_signed_or_read() -> None:
    pair = key()
    many = tuple(multiaddr.Multiaddr(f"/ip4/198.18.0.{i}/tcp/1") for i in range(17))
    body = RecordBody(bytes(16), envelopes.encode_peer_record(peer_of(pair), 1, many), NOW, 60)
    with pytest.raises(MalformedMessage, match="more than 16"):
        verify_record(envelopes.seal(pair.private_key, encode(body)), now=NOW)


@pytest.mark.parametrize("name", ["\x1b[31mred", "", "x" * 65])
def test_names_that_could_not_be_shown_safely_are_refused(name: str) -> None:
    pair = key()
    body = RecordBody(bytes(16), envelopes.encode_peer_record(peer_of(pair), 1, ()), NOW, 60,
                      name=name)
    with pytest.raises(MalformedMessage):
        verify_record(envelopes.seal(pair.private_key, encode(body)), now=NOW)


def test_the_store_keeps_the_newest_record_and_refuses_stale_and_replayed_ones() -> None:
    pair = key()
    store: RecordStore[AddressRecord] = RecordStore()
    first, second = record(pair, seq=5), record(pair, seq=6, name="alice2")
    assert store.offer(first, NOW) is True
    assert store.offer(first, NOW) is False  # the same record again: nothing new
    assert store.offer(second, NOW) is True
    with pytest.raises(StaleRecord, match="older"):
        store.offer(first, NOW)  # a replay of the superseded record
    with pytest.raises(StaleRecord, match="other contents"):
        store.offer(record(pair, seq=6, name="mallory"), NOW)
    with pytest.raises(StaleRecord, match="expired"):
        store.offer(record(pair, seq=7), NOW + 600)
    assert store.get(str(peer_of(pair)), NOW) == second
    assert store.get(str(peer_of(pair)), NOW + 600) is None  # expired records vanish


def test_the_store_is_bounded() -> None:
    store: RecordStore[AddressRecord] = RecordStore(max_records=2)
    pairs = [key() for _ in range(3)]
    for pair in pairs:
        store.offer(record(pair), NOW)
    assert len(store) == 2
    assert store.get(str(peer_of(pairs[0])), NOW) is None


TXID = bytes(range(16))
GOLDEN: dict[str, Message] = {
    "record_body": RecordBody(
        TXID, bytes.fromhex("0a0212201801"), 1_700_000_000, 600,
        NatType.PORT_RESTRICTED_CONE, MappingHint.ENDPOINT_INDEPENDENT, ("chat",), "alice"),
    "rendezvous_register": Register(TXID, "my-net", b"signed record", 600),
    "rendezvous_registered": Registered(TXID, 300),
    "rendezvous_discover": Discover(TXID, "my-net", bytes(7) + b"\x05"),
    "rendezvous_discovered": Discovered(TXID, (b"record a", b"record b"), b""),
    "rendezvous_unregister": Unregister(TXID, "my-net"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_vectors(name: str) -> None:
    expected = bytes.fromhex((VECTORS / f"{name}.hex").read_text().strip())
    assert encode(GOLDEN[name]) == expected
    assert decode(expected, type(GOLDEN[name])) == GOLDEN[name]


@pytest.mark.parametrize("namespace", ["", "-lead", "has space", "x" * 65, "tab\t", "é"])
def test_bad_namespaces_are_malformed(namespace: str) -> None:
    frame = encode(Register(TXID, "placeholder", b"r", 60)).replace(
        b"kplaceholder", bytes([0x60 + len(namespace.encode())]) + namespace.encode())
    if len(namespace.encode()) < 24:
        with pytest.raises(MalformedMessage, match="namespace"):
            decode(frame, Register)
    with pytest.raises(MalformedMessage, match="namespace"):
        check_namespace(namespace)


def test_a_short_cookie_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="cookie"):
        decode(encode(Discover(TXID, "n", b"abc")), Discover)


@given(st.binary(max_size=envelopes.MAX_ENVELOPE_SIZE + 16))
def test_arbitrary_bytes_only_ever_raise_remote_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        verify_record(data, now=NOW)
