"""Mapped addresses in a signed record: they lead the addresses and are marked as such."""

from __future__ import annotations

import multiaddr
import pytest

from meshnat.errors import InvalidRecord
from meshnat.records import AddressRecord
from meshnat.records.record import sign_record, verify_record
from tests.unit.test_records import ADDRS, NOW, key, peer_of

MAPPED = multiaddr.Multiaddr("/ip4/11.18.0.10/udp/4001/quic-v1")


def test_a_record_says_which_of_its_addresses_are_mapped() -> None:
    pair = key()
    record = AddressRecord(peer_id=peer_of(pair), seq=1, addrs=(MAPPED, *ADDRS), issued_at=NOW,
                           ttl=600, mapped=1)
    back = verify_record(sign_record(pair.private_key, record).data, now=NOW)
    assert back.mapped_addrs() == [MAPPED] and back.direct_addrs()[0] == MAPPED
    assert back.to_json()["mapped"] == [str(MAPPED)]


def test_a_record_without_mappings_encodes_as_before() -> None:
    pair = key()
    plain = AddressRecord(peer_id=peer_of(pair), seq=1, addrs=ADDRS, issued_at=NOW, ttl=600)
    assert verify_record(sign_record(pair.private_key, plain).data, now=NOW).mapped == 0


@pytest.mark.parametrize("mapped", [4, 3])  # more than the addresses; a relay circuit
def test_mapped_must_name_direct_addresses(mapped: int) -> None:
    pair = key()
    record = AddressRecord(peer_id=peer_of(pair), seq=1, addrs=ADDRS, issued_at=NOW, ttl=600,
                           mapped=mapped)
    with pytest.raises(InvalidRecord):
        verify_record(sign_record(pair.private_key, record).data, now=NOW)
