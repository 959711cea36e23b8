"""Wire messages of `/meshnat/traversal/1.0.0` (docs/protocols/traversal.md).

Over a stream (any connection, a relay circuit included): `Offer` and the answering `Offer`
open a traversal; `Take` hands one port pair to the transport and is answered by `TakeAccept`
(or an ErrorResponse). `Probe` datagrams travel between the two traversal sockets; an answer
(`ack`) carries the endpoint its sender saw the probe come from, so each side learns its own
public endpoint for the pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from meshnat.endpoint import Endpoint
from meshnat.wire.codec import Fields, TxidOnly
from meshnat.wire.error_response import ErrorCode, ErrorResponse

CANDIDATES, ACK, OBSERVED, YOURS, MINE, DIAL, SHARED, PADDING = 8, 9, 10, 11, 12, 13, 14, 15
MAX_CANDIDATES = 8
MAX_PADDING = 3072
"""Padding an Offer may carry (it pays for probes to the sender's unproven addresses)."""


class MsgType(IntEnum):
    OFFER = 80
    PROBE = 81
    TAKE = 82
    TAKE_ACCEPT = 83


@dataclass(frozen=True, slots=True)
class Offer:
    """Where the sender's traversal socket may be reached, best first. `txid` is the
    traversal's id on both sides; `shared`: both sides probe from their node's UDP listen port
    (the hole puncher's way) instead of a socket of the traversal's own. `padding` only
    makes the Offer larger: the receiver sends at most 3x the Offer's bytes to the candidate
    IPs of each network not yet proven (docs/protocols/traversal.md), so a sender pays for
    its probes."""

    TYPE: ClassVar[MsgType] = MsgType.OFFER
    txid: bytes
    candidates: tuple[Endpoint, ...]
    shared: bool = False
    padding: bytes = b""

    def to_fields(self) -> dict[int, object]:
        fields: dict[int, object] = {
            CANDIDATES: [e.to_wire() for e in self.candidates[:MAX_CANDIDATES]],
            SHARED: int(self.shared)}
        if self.padding:
            fields[PADDING] = self.padding[:MAX_PADDING]
        return fields

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        candidates = tuple(Endpoint.from_wire(v)
                           for v in f.pop_list(CANDIDATES, max_items=MAX_CANDIDATES))
        shared = bool(f.pop_int(SHARED, lo=0, hi=1))
        padding = f.pop_bytes(PADDING, max_size=MAX_PADDING) if PADDING in f else b""
        return cls(txid, candidates, shared, padding)


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe or keepalive; an answer (`ack`) says where the probe came from (`observed`)."""

    TYPE: ClassVar[MsgType] = MsgType.PROBE
    txid: bytes
    ack: bool = False
    observed: Endpoint | None = None

    def to_fields(self) -> dict[int, object]:
        fields: dict[int, object] = {ACK: int(self.ack)}
        if self.observed is not None:
            fields[OBSERVED] = self.observed.to_wire()
        return fields

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        ack = bool(f.pop_int(ACK, lo=0, hi=1))
        observed = Endpoint.from_wire(f.pop(OBSERVED)) if OBSERVED in f else None
        return cls(txid, ack, observed)


@dataclass(frozen=True, slots=True)
class Take:
    """The sender takes the pair from its endpoint `mine` (as the receiver sees it) to the
    receiver's `yours`. `dial` false: the receiver listens there and the sender will dial;
    true: the sender listens and the receiver dials now."""

    TYPE: ClassVar[MsgType] = MsgType.TAKE
    txid: bytes
    yours: Endpoint
    mine: Endpoint | None
    dial: bool = False

    def to_fields(self) -> dict[int, object]:
        fields: dict[int, object] = {YOURS: self.yours.to_wire()}
        if self.mine is not None:
            fields[MINE] = self.mine.to_wire()
        fields[DIAL] = int(self.dial)
        return fields

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        yours = Endpoint.from_wire(f.pop(YOURS))
        mine = Endpoint.from_wire(f.pop(MINE)) if MINE in f else None
        return cls(txid, yours, mine, bool(f.pop_int(DIAL, lo=0, hi=1)))


@dataclass(frozen=True, slots=True)
class TakeAccept(TxidOnly):
    """The receiver took its end of the pair (listening, or about to dial)."""

    TYPE: ClassVar[MsgType] = MsgType.TAKE_ACCEPT


@dataclass(frozen=True, slots=True)
class Refusal:
    """This node will not do what a request asked: the code and a fixed reason that go to
    the peer (never the text of a local error)."""

    code: ErrorCode
    reason: str

    def answer(self, txid: bytes) -> ErrorResponse:
        """The ErrorResponse to the request `txid`."""
        return ErrorResponse(txid, self.code, self.reason)


UNAVAILABLE = Refusal(ErrorCode.UNAVAILABLE, "not available here now")
"""What a local failure (no socket, the pair's port held) is answered with."""
ID_IN_USE = Refusal(ErrorCode.BAD_REQUEST, "traversal id in use")
UNKNOWN_TRAVERSAL = Refusal(ErrorCode.UNAVAILABLE, "no such traversal with you")
ALREADY_TAKEN = Refusal(ErrorCode.UNAVAILABLE, "a pair of this traversal is taken already")
NO_MATCHING_PAIR = Refusal(ErrorCode.UNAVAILABLE, "no alive pair matches the one taken")
