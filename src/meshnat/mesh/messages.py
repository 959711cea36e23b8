"""Wire messages of `/meshnat/dialback/1.1.0` (docs/protocols/dialback.md).

A node asks a peer to dial it back on its listen ports (or on a port its router mapped); the
peer dials only the address it observes the request come from, so the request can aim at no one
else, and sends the request's id over each connection it made. Message types 96-98. 1.1.0 added
the request's `ip` (field 12): the address the requester expects to be seen at.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import ClassVar, Self

from meshnat.errors import MalformedMessage
from meshnat.wire.codec import Fields, TxidOnly

TCP_PORT, UDP_PORT, TCP_OK, UDP_OK, IP = 8, 9, 10, 11, 12


class MsgType(IntEnum):
    DIAL_BACK_REQUEST = 96
    DIAL_BACK_RESPONSE = 97
    DIAL_BACK_PROOF = 98


def _pop_port(f: Fields, key: int) -> int | None:
    return f.pop_int(key, lo=1, hi=65535) if key in f else None


def _pop_result(f: Fields, key: int) -> bool | None:
    return bool(f.pop_int(key, lo=0, hi=1)) if key in f else None


def _pop_ip(f: Fields) -> IPv4Address | IPv6Address | None:
    if IP not in f:
        return None
    raw = f.pop_bytes(IP, max_size=16)
    if len(raw) not in (4, 16):
        raise MalformedMessage(f"ip must be 4 or 16 bytes, got {len(raw)}")
    return ip_address(raw)


@dataclass(frozen=True, slots=True)
class DialBackRequest:
    """"Dial me back on these ports of the address you see me at" (None: not that transport).

    `ip`: the address the requester expects to be seen at (a router port mapping's external
    address); the dialler refuses when it sees another. None: wherever it sees the requester."""

    TYPE: ClassVar[MsgType] = MsgType.DIAL_BACK_REQUEST
    txid: bytes
    tcp_port: int | None
    udp_port: int | None
    ip: IPv4Address | IPv6Address | None = None

    def to_fields(self) -> dict[int, object]:
        fields: dict[int, object | None] = {
            TCP_PORT: self.tcp_port, UDP_PORT: self.udp_port,
            IP: None if self.ip is None else self.ip.packed}
        return {k: v for k, v in fields.items() if v is not None}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, _pop_port(f, TCP_PORT), _pop_port(f, UDP_PORT), _pop_ip(f))


@dataclass(frozen=True, slots=True)
class DialBackResponse:
    """Whether each dial reached the requester (None: not tried). The requester believes only
    the connections it received; this says when to stop waiting for them."""

    TYPE: ClassVar[MsgType] = MsgType.DIAL_BACK_RESPONSE
    txid: bytes
    tcp_ok: bool | None
    udp_ok: bool | None

    def to_fields(self) -> dict[int, object]:
        results = {TCP_OK: self.tcp_ok, UDP_OK: self.udp_ok}
        return {k: int(v) for k, v in results.items() if v is not None}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, _pop_result(f, TCP_OK), _pop_result(f, UDP_OK))


@dataclass(frozen=True, slots=True)
class DialBackProof(TxidOnly):
    """Sent by the dialler over the connection it made: it is the dial-back for `txid`."""

    TYPE: ClassVar[MsgType] = MsgType.DIAL_BACK_PROOF
