"""Wire messages of `/meshnat/classify/1.1.0` (docs/protocols/classify.md).

Over a stream a classifying node asks a reflector for its second UDP port (`InfoRequest`) or
to send a `ProbeDatagram` into the node's UDP mapping from a fresh port (`ProbeRequest`).
Types 21 and 22 (1.0.0's TCP dial-back) are retired: a TCP mapping is confirmed over
`/meshnat/dialback` (`meshnat.mesh.dialback`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from meshnat.endpoint import Endpoint
from meshnat.wire.codec import Fields, TxidOnly

ALT_PORT, TARGET = 8, 9


class MsgType(IntEnum):
    INFO_REQUEST = 16
    INFO_RESPONSE = 17
    PROBE_REQUEST = 18
    PROBE_ACK = 19
    PROBE_DATAGRAM = 20


@dataclass(frozen=True, slots=True)
class InfoRequest(TxidOnly):
    """Which second UDP port do you answer observe requests on?"""

    TYPE: ClassVar[MsgType] = MsgType.INFO_REQUEST


@dataclass(frozen=True, slots=True)
class InfoResponse:
    """The reflector's second UDP port, on the same IP as its primary one."""

    TYPE: ClassVar[MsgType] = MsgType.INFO_RESPONSE
    txid: bytes
    alt_port: int

    def to_fields(self) -> dict[int, object]:
        return {ALT_PORT: self.alt_port}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, f.pop_int(ALT_PORT, lo=1, hi=65535))


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """Send a ProbeDatagram carrying `txid` to `target`, from a port never used before.

    A fresh source port cannot have been contacted by the target's socket, even in an earlier
    run, so its arrival measures filtering and nothing else. A reflector honours the request
    only when `target` has the requester's own IP address."""

    TYPE: ClassVar[MsgType] = MsgType.PROBE_REQUEST
    txid: bytes
    target: Endpoint

    def to_fields(self) -> dict[int, object]:
        return {TARGET: self.target.to_wire()}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, Endpoint.from_wire(f.pop(TARGET)))


@dataclass(frozen=True, slots=True)
class ProbeAck(TxidOnly):
    """The probe datagrams for `txid` were sent."""

    TYPE: ClassVar[MsgType] = MsgType.PROBE_ACK


@dataclass(frozen=True, slots=True)
class ProbeDatagram(TxidOnly):
    """An unsolicited datagram (filtering test) or one sent to oneself (hairpin test)."""

    TYPE: ClassVar[MsgType] = MsgType.PROBE_DATAGRAM
