"""Wire messages of `/meshnat/punch/1.2.0` (docs/protocols/punch.md).

Over a coordination stream (a relay circuit, or any connection): the initiator sends an
`Offer`, the responder answers with its own, the initiator sends `Sync` and both punch.
`Padding` frames may precede the responder's Offer and the initiator's Sync: they pay for the
probes the other side will send to this side's unproven addresses (birthday probing).
`Probe` datagrams then travel between the nodes' UDP (QUIC) ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, Self

from meshnat.endpoint import Endpoint
from meshnat.wire.codec import Fields, TxidOnly

if TYPE_CHECKING:  # the discovery package imports trio; this module stays pure
    from meshnat.discovery.consensus import Consensus

UDP, TCP, MAPPING, ACK, PUBLIC, PADDING, MAPPING6, TURNAROUND = 8, 9, 10, 11, 12, 13, 14, 15
MAX_CANDIDATES = 8
MAX_PADDING = 4000
"""Padding bytes one Offer or Padding frame may carry (frames are at most 4096 bytes)."""
MAX_TURNAROUND_US = 60_000_000
"""The largest turnaround an Offer may state (µs): longer than any coordination may take."""


class MsgType(IntEnum):
    OFFER = 32
    SYNC = 33
    PROBE = 34
    PADDING = 35


class MappingHint(IntEnum):
    """What the sender knows of its own NAT mapping in one IP family (from its NatReport or
    a discovery round of that family). For IPv6, a global address behind a stateful firewall
    and no translation is endpoint-independent (the mapping is the identity)."""

    UNKNOWN = 0
    ENDPOINT_INDEPENDENT = 1
    ENDPOINT_DEPENDENT = 2

    @classmethod
    def from_consensus(cls, consensus: Consensus) -> MappingHint:
        """The mapping a UDP round shows: one address seen by a majority means
        endpoint-independent mapping; honest reflectors disagreeing on the port means
        endpoint-dependent; else unknown."""
        if consensus.address is not None:
            return cls.ENDPOINT_INDEPENDENT
        if consensus.endpoint_dependent:
            return cls.ENDPOINT_DEPENDENT
        return cls.UNKNOWN


def _endpoints(f: Fields, key: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.from_wire(v) for v in f.pop_list(key, max_items=MAX_CANDIDATES))


@dataclass(frozen=True, slots=True)
class Offer:
    """Where the sender can be punched to: UDP and TCP candidates, best first; `public` says
    its TCP listener is reachable as it is (no NAT in front), so it need not dial. `padding`
    only makes the Offer larger: it pays for probes to the sender's unproven candidates.
    `mapping` is the sender's IPv4 mapping, `mapping6` its IPv6 one (no translation, or
    NPTv6: endpoint-independent; a NAT66 may be endpoint-dependent). Both are always on the
    wire since `/meshnat/punch/1.1.0` (1.0.0 carried only `mapping`).

    `turnaround` (µs, since 1.2.0, required): in the responder's Offer, how long it took from
    the coordination stream's arrival (its negotiation) to this Offer's first byte written, so
    the initiator's round trip less it is the network's (the RTT/2 wait after Sync). The
    initiator's own Offer carries 0. Only a timing hint: a peer that lies shifts its own punch
    by at most half of it (the initiator clamps the result at 0 and at its measured RTT)."""

    TYPE: ClassVar[MsgType] = MsgType.OFFER
    txid: bytes
    udp: tuple[Endpoint, ...]
    tcp: tuple[Endpoint, ...]
    mapping: MappingHint = MappingHint.UNKNOWN
    public: bool = False
    padding: bytes = b""
    mapping6: MappingHint = MappingHint.UNKNOWN
    turnaround: int = 0

    def to_fields(self) -> dict[int, object]:
        fields: dict[int, object] = {UDP: [e.to_wire() for e in self.udp[:MAX_CANDIDATES]],
                                     TCP: [e.to_wire() for e in self.tcp[:MAX_CANDIDATES]],
                                     MAPPING: int(self.mapping), PUBLIC: int(self.public),
                                     MAPPING6: int(self.mapping6),
                                     TURNAROUND: min(max(self.turnaround, 0), MAX_TURNAROUND_US)}
        if self.padding:
            fields[PADDING] = self.padding[:MAX_PADDING]
        return fields

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        udp, tcp = _endpoints(f, UDP), _endpoints(f, TCP)
        mapping = MappingHint(f.pop_int(MAPPING, lo=0, hi=2))
        public = bool(f.pop_int(PUBLIC, lo=0, hi=1))
        padding = f.pop_bytes(PADDING, max_size=MAX_PADDING) if PADDING in f else b""
        mapping6 = MappingHint(f.pop_int(MAPPING6, lo=0, hi=2))  # required: no guessing
        turnaround = f.pop_int(TURNAROUND, lo=0, hi=MAX_TURNAROUND_US)  # required (1.2.0)
        return cls(txid, udp, tcp, mapping, public, padding, mapping6, turnaround)


@dataclass(frozen=True, slots=True)
class Padding:
    """Bytes that only pay: the receiver may send 3x what it received to this side's
    addresses before they are proven (birthday probing needs hundreds of probes there)."""

    TYPE: ClassVar[MsgType] = MsgType.PADDING
    txid: bytes
    padding: bytes

    def to_fields(self) -> dict[int, object]:
        return {PADDING: self.padding[:MAX_PADDING]}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, f.pop_bytes(PADDING, max_size=MAX_PADDING))


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
