"""The CBOR body of a meshnat address record (docs/protocols/records.md).

The body travels inside a libp2p signed envelope (domain `meshnat-address-record`); it carries
a libp2p PeerRecord (peer id, sequence number, addresses) as opaque protobuf bytes, plus what
libp2p's record has no room for: when it was issued, how long it holds, a NAT summary, the
services the node offers and a display name. Pure: decoding is strict and bounded like every
meshnat message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from meshnat.classify.report import NatType
from meshnat.errors import MalformedMessage
from meshnat.punch.messages import MappingHint
from meshnat.wire.codec import Fields, check_printable, describe

PEER_RECORD, ISSUED_AT, TTL, NAT_TYPE, MAPPING, SERVICES, NAME, MAPPED = (8, 9, 10, 11, 12, 13,
                                                                    14, 15)
MAX_PEER_RECORD = 1536
MAX_TTL = 86_400
"""A day: a record is a promise about addresses, which rarely hold longer."""
MAX_SERVICES = 16
MAX_MAPPED = 4
"""Most addresses a record may mark as router port mappings (one per transport and family)."""
MAX_LABEL = 64
"""Longest service name or display name, in characters."""


class MsgType(IntEnum):
    RECORD_BODY = 64


def check_label(value: str, what: str) -> str:
    """A service or display name: 1..MAX_LABEL printable characters."""
    return check_printable(value, what, MAX_LABEL)


@dataclass(frozen=True, slots=True)
class RecordBody:
    """What a node signs about itself; `txid` is a random id of this signed record."""

    TYPE: ClassVar[MsgType] = MsgType.RECORD_BODY
    txid: bytes
    peer_record: bytes
    """libp2p PeerRecord protobuf: peer id, sequence number, multiaddrs."""
    issued_at: int
    """Unix time (seconds) of signing: expiry must be judged by a third party's clock."""
    ttl: int
    """Seconds after `issued_at` the record holds."""
    nat_type: NatType | None = None
    """None: not measured."""
    mapping: MappingHint = MappingHint.UNKNOWN
    services: tuple[str, ...] = ()
    name: str | None = None
    mapped: int = 0
    """How many of the PeerRecord's first addresses are router port mappings (omitted if 0)."""

    def to_fields(self) -> dict[int, object]:
        fields: dict[int, object] = {PEER_RECORD: self.peer_record, ISSUED_AT: self.issued_at,
                                     TTL: self.ttl, MAPPING: int(self.mapping),
                                     SERVICES: list(self.services)}
        if self.nat_type is not None:
            fields[NAT_TYPE] = str(self.nat_type)
        if self.name is not None:
            fields[NAME] = self.name
        if self.mapped:
            fields[MAPPED] = self.mapped
        return fields

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        peer_record = f.pop_bytes(PEER_RECORD, max_size=MAX_PEER_RECORD)
        issued_at = f.pop_int(ISSUED_AT, hi=2**40)
        ttl = f.pop_int(TTL, lo=1, hi=MAX_TTL)
        nat_type = None
        if NAT_TYPE in f:
            text = f.pop_str(NAT_TYPE, max_len=32)
            try:
                nat_type = NatType(text)
            except ValueError:
                raise MalformedMessage(f"unknown NAT type {describe(text)}") from None
        mapping = MappingHint(f.pop_int(MAPPING, lo=0, hi=2))
        services = []
        for item in f.pop_list(SERVICES, max_items=MAX_SERVICES):
            if type(item) is not str:
                raise MalformedMessage("services must be strings")
            services.append(check_label(item, "a service name"))
        name = check_label(f.pop_str(NAME, max_len=MAX_LABEL), "name") if NAME in f else None
        mapped = f.pop_int(MAPPED, lo=1, hi=MAX_MAPPED) if MAPPED in f else 0
        return cls(txid, peer_record, issued_at, ttl, nat_type, mapping, tuple(services), name,
                   mapped)
