"""Wire messages of `/meshnat/punch/1.0.0` (docs/protocols/punch.md).

Over a coordination stream (a relay circuit, or any connection): the initiator sends an
`Offer`, the responder answers with its own, the initiator sends `Sync` and both punch.
`Probe` datagrams then travel between the nodes' UDP (QUIC) ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from meshnat.endpoint import Endpoint
from meshnat.wire.codec import Fields, TxidOnly

UDP, TCP, MAPPING, ACK, PUBLIC = 8, 9, 10, 11, 12
MAX_CANDIDATES = 8


class MsgType(IntEnum):
    OFFER = 32
    SYNC = 33
    PROBE = 34


class MappingHint(IntEnum):
    """What the sender knows of its own NAT mapping (from its NatReport)."""

    UNKNOWN = 0
    ENDPOINT_INDEPENDENT = 1
    ENDPOINT_DEPENDENT = 2


def _endpoints(f: Fields, key: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.from_wire(v) for v in f.pop_list(key, max_items=MAX_CANDIDATES))


@dataclass(frozen=True, slots=True)
class Offer:
    """Where the sender can be punched to: UDP and TCP candidates, best first; `public` says
    its TCP listener is reachable as it is (no NAT in front), so it need not dial."""

    TYPE: ClassVar[MsgType] = MsgType.OFFER
    txid: bytes
    udp: tuple[Endpoint, ...]
    tcp: tuple[Endpoint, ...]
    mapping: MappingHint = MappingHint.UNKNOWN
    public: bool = False

    def to_fields(self) -> dict[int, object]:
        return {UDP: [e.to_wire() for e in self.udp[:MAX_CANDIDATES]],
                TCP: [e.to_wire() for e in self.tcp[:MAX_CANDIDATES]],
                MAPPING: int(self.mapping), PUBLIC: int(self.public)}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        udp, tcp = _endpoints(f, UDP), _endpoints(f, TCP)
        mapping = MappingHint(f.pop_int(MAPPING, lo=0, hi=2))
        return cls(txid, udp, tcp, mapping, bool(f.pop_int(PUBLIC, lo=0, hi=1)))


@dataclass(frozen=True, slots=True)
class Sync(TxidOnly):
    """The initiator's signal: the responder punches on receipt, the initiator RTT/2 later."""

    TYPE: ClassVar[MsgType] = MsgType.SYNC


@dataclass(frozen=True, slots=True)
class Probe:
    """A punch datagram; `ack` says the sender has already heard the other side."""

    TYPE: ClassVar[MsgType] = MsgType.PROBE
    txid: bytes
    ack: bool = False

    def to_fields(self) -> dict[int, object]:
        return {ACK: int(self.ack)}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, bool(f.pop_int(ACK, lo=0, hi=1)))
