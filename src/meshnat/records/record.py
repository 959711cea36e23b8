"""`AddressRecord`: how to reach a node, signed by that node (docs/protocols/records.md).

A signed record is a libp2p envelope (py-libp2p's `Envelope`, domain `meshnat-address-record`)
whose payload is a CBOR `RecordBody` carrying a libp2p `PeerRecord`. `verify_record` is the only
way to turn bytes into an `AddressRecord`: nothing unverified is ever dialled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import multiaddr

from meshnat._libp2p import ID, PrivateKey, is_circuit_addr
from meshnat._libp2p import records as envelopes
from meshnat.classify.report import Mapping, NatReport, NatType
from meshnat.errors import ForgedRecord, InvalidRecord, StaleRecord
from meshnat.punch.messages import MappingHint
from meshnat.records.messages import RecordBody
from meshnat.wire import decode, encode, new_txid

MAX_CLOCK_SKEW = 300.0
"""Seconds a record may claim to be issued ahead of the reader's clock."""


@dataclass(frozen=True, slots=True)
class NatSummary:
    """What the node knows of its NAT; None and UNKNOWN mean "not measured"."""

    nat_type: NatType | None = None
    mapping: MappingHint = MappingHint.UNKNOWN

    @classmethod
    def from_report(cls, report: NatReport) -> NatSummary:
        if report.mapping is None:
            return cls(report.nat_type, MappingHint.UNKNOWN)
        independent = report.mapping is Mapping.ENDPOINT_INDEPENDENT
        return cls(report.nat_type, MappingHint.ENDPOINT_INDEPENDENT if independent
                   else MappingHint.ENDPOINT_DEPENDENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressRecord:
    """A node's own, signed statement of its addresses; newer `seq` supersedes older."""

    peer_id: ID
    seq: int
    addrs: tuple[multiaddr.Multiaddr, ...]
    """Confirmed public addresses (TCP, QUIC) and relay circuit addresses."""
    issued_at: int
    """Unix seconds."""
    ttl: int
    """Seconds after `issued_at` the record holds."""
    nat: NatSummary = NatSummary()
    services: tuple[str, ...] = ()
    """Names of services the node offers (tunnels advertise theirs here)."""
    name: str | None = None
    """A display name chosen by the node (chat shows it)."""
    mapped: int = 0
    """How many of the first `addrs` are router port mappings a dial-back confirmed
    (PortMapper): the first rung of a Connector's ladder."""
    record_id: bytes = field(default=b"", compare=False)

    @property
    def key(self) -> str:
        return str(self.peer_id)

    @property
    def expires_at(self) -> float:
        return float(self.issued_at + self.ttl)

    def direct_addrs(self) -> list[multiaddr.Multiaddr]:
        return [a for a in self.addrs if not is_circuit_addr(a)]

    def mapped_addrs(self) -> list[multiaddr.Multiaddr]:
        return list(self.addrs[: self.mapped])

    def relay_addrs(self) -> list[multiaddr.Multiaddr]:
        return [a for a in self.addrs if is_circuit_addr(a)]

    def display_name(self) -> str:
        return self.name or str(self.peer_id)[-8:]

    def to_json(self) -> dict[str, object]:
        return {"peer": str(self.peer_id), "seq": self.seq, "name": self.name,
                "addrs": [str(a) for a in self.addrs], "issued_at": self.issued_at,
                "ttl": self.ttl, "nat_type": self.nat.nat_type and str(self.nat.nat_type),
                "mapping": self.nat.mapping.name.lower(), "services": list(self.services),
                "mapped": [str(a) for a in self.mapped_addrs()]}


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A verified (or freshly signed) record and the exact bytes its signer produced."""

    record: AddressRecord
    data: bytes


def sign_record(key: PrivateKey, record: AddressRecord) -> SignedRecord:
    """Sign `record` with an identity key, which must be the record's peer's."""
    signer = ID.from_pubkey(key.get_public_key())
    if record.peer_id != signer:
        raise ForgedRecord(f"{signer} cannot sign a record for {record.peer_id}")
    body = RecordBody(
        record.record_id or new_txid(),
        envelopes.encode_peer_record(record.peer_id, record.seq, record.addrs),
        record.issued_at, record.ttl, record.nat.nat_type, record.nat.mapping,
        record.services, record.name, record.mapped)
    return SignedRecord(record, envelopes.seal(key, encode(body)))


def verify_record(data: bytes, *, now: float, max_skew: float = MAX_CLOCK_SKEW) -> AddressRecord:
    """Check a signed record and return what it says.

    `now` is Unix time. Raises MessageTooLarge or MalformedMessage (not a record),
    ForgedRecord (bad signature, or signed by a key that is not the named peer's),
    StaleRecord (expired) or InvalidRecord (issued further in the future than `max_skew`).
    """
    signer, payload = envelopes.open_envelope(data)
    body = decode(payload, RecordBody, limit=envelopes.MAX_ENVELOPE_SIZE)
    peer, seq, addrs = envelopes.decode_peer_record(body.peer_record)
    if peer != signer:
        raise ForgedRecord(f"record names {peer} but is signed by {signer}")
    if body.mapped > len(addrs) or any(is_circuit_addr(a) for a in addrs[: body.mapped]):
        raise InvalidRecord("more mapped addresses than direct addresses")
    record = AddressRecord(peer_id=peer, seq=seq, addrs=addrs, issued_at=body.issued_at,
                           ttl=body.ttl, nat=NatSummary(body.nat_type, body.mapping),
                           services=body.services, name=body.name, mapped=body.mapped,
                           record_id=body.txid)
    if record.expires_at <= now:
        raise StaleRecord(f"record of {peer} expired {now - record.expires_at:.0f}s ago")
    if body.issued_at > now + max_skew:
        raise InvalidRecord(f"record of {peer} is issued {body.issued_at - now:.0f}s ahead")
    return record
