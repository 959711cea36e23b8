"""Wire messages of `/meshnat/reflect/1.0.0` and its UDP form (docs/protocols/reflect.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import ClassVar, Self

from meshnat.endpoint import Endpoint
from meshnat.wire.codec import Fields

OBSERVED, TRANSPORT, PADDING = 8, 9, 10
MAX_PADDING = 512
REQUEST_PADDING = 48
"""Clients pad UDP requests so that any response (even an IPv6 one) is no larger."""

class MsgType(IntEnum):
    OBSERVE_REQUEST = 1
    OBSERVE_RESPONSE = 2

class Transport(StrEnum):
    TCP = "tcp"
    UDP = "udp"

_TRANSPORT_CODES = {Transport.TCP: 0, Transport.UDP: 1}
_TRANSPORTS = {v: k for k, v in _TRANSPORT_CODES.items()}

@dataclass(frozen=True, slots=True)
class ObserveRequest:
    """"Which source endpoint do you see for me?"; `padding` only sizes UDP requests."""

    TYPE: ClassVar[MsgType] = MsgType.OBSERVE_REQUEST
    txid: bytes
    padding: bytes = b""

    def to_fields(self) -> dict[int, object]:
        return {PADDING: self.padding} if self.padding else {}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        padding = f.pop_bytes(PADDING, max_size=MAX_PADDING) if PADDING in f else b""
        return cls(txid, padding)

@dataclass(frozen=True, slots=True)
class ObserveResponse:
    """The source endpoint the reflector saw for the request `txid`, and over which transport."""

    TYPE: ClassVar[MsgType] = MsgType.OBSERVE_RESPONSE
    txid: bytes
    observed: Endpoint
    transport: Transport

    def to_fields(self) -> dict[int, object]:
        return {OBSERVED: self.observed.to_wire(), TRANSPORT: _TRANSPORT_CODES[self.transport]}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        observed = Endpoint.from_wire(f.pop(OBSERVED))
        return cls(txid, observed, _TRANSPORTS[f.pop_int(TRANSPORT, lo=0, hi=1)])
