"""PCP (RFC 6887) messages, MAP and ANNOUNCE opcodes: encoding and strict decoding (pure).

Every request carries the client's own IP address (IPv4 as an IPv4-mapped IPv6 address) so
that the server can tell whether a NAT sits between them; a MAP request also carries a
12-byte nonce that the response must echo. Responses carry a result code, a lifetime (for an
error: how long before trying again) and the server's epoch. Options after the opcode payload
are skipped, bounded (RFC 6887 §7: a message is at most 1100 bytes, options 4-byte aligned).
A NAT-PMP-only server answers a PCP request with a NAT-PMP "unsupported version" response:
`decode_response` raises UnsupportedVersion for it, with the version it got.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from meshnat.errors import MalformedMessage, UnsupportedVersion

VERSION = 2
MAX_MESSAGE = 1100
"""RFC 6887 §7: longest PCP message."""
RESPONSE_BIT = 0x80
NONCE_SIZE = 12
PROTOCOLS = {"tcp": 6, "udp": 17}
"""IANA protocol numbers of the transports a MAP request names."""

_HEADER = struct.Struct("!BBHI16s")
_RESPONSE_HEADER = struct.Struct("!BBBBII12s")
_MAP = struct.Struct("!12sB3sHH16s")


class Opcode(IntEnum):
    ANNOUNCE = 0
    MAP = 1


class ResultCode(IntEnum):
    """RFC 6887 §7.4."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


def _mapped(ip: IPv4Address | IPv6Address) -> bytes:
    """An address in PCP's 16-byte form (RFC 6887 §5: IPv4 as ::ffff:a.b.c.d)."""
    return ip.packed if ip.version == 6 else b"\x00" * 10 + b"\xff\xff" + ip.packed


def _unmapped(raw: bytes) -> IPv4Address | IPv6Address:
    ip = IPv6Address(raw)
    return ip.ipv4_mapped or ip


def announce_request(client_ip: IPv4Address | IPv6Address) -> bytes:
    """RFC 6887 §14.1: an ANNOUNCE request, answered with the server's epoch (a probe)."""
    return _HEADER.pack(VERSION, Opcode.ANNOUNCE, 0, 0, _mapped(client_ip))


def map_request(client_ip: IPv4Address | IPv6Address, nonce: bytes, transport: str,
                internal_port: int, suggested_port: int, lifetime: int) -> bytes:
    """RFC 6887 §11.1: ask for (lifetime > 0) or delete (lifetime 0) a mapping of
    `internal_port`; the suggested external address is left unspecified (IPv4 any)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("a PCP nonce is 12 bytes")
    any_ip = IPv4Address(0) if client_ip.version == 4 else IPv6Address(0)
    payload = _MAP.pack(nonce, PROTOCOLS[transport], bytes(3), internal_port, suggested_port,
                        _mapped(any_ip))
    return _HEADER.pack(VERSION, Opcode.MAP, 0, lifetime, _mapped(client_ip)) + payload


@dataclass(frozen=True, slots=True)
class Response:
    """A PCP response; `nonce`..`external_ip` only for MAP (None for ANNOUNCE)."""

    opcode: Opcode
    result: ResultCode
    lifetime: int
    epoch: int
    nonce: bytes | None = None
    protocol: int | None = None
    internal_port: int | None = None
    external_port: int | None = None
    external_ip: IPv4Address | IPv6Address | None = None


def _skip_options(data: bytes, offset: int) -> None:
    while offset < len(data):
        if len(data) - offset < 4:
            raise MalformedMessage("PCP: truncated option header")
        length = int.from_bytes(data[offset + 2:offset + 4], "big")
        offset += 4 + length + (-length % 4)
        if offset > len(data):
            raise MalformedMessage("PCP: option longer than the message")


def decode_response(data: bytes) -> Response:
    """One PCP response. Raises MalformedMessage, or UnsupportedVersion for a response of
    another version (a NAT-PMP server's answer), and nothing else."""
    if len(data) > MAX_MESSAGE:
        raise MalformedMessage("PCP: message longer than 1100 bytes")
    if len(data) < 4:
        raise MalformedMessage("PCP: response shorter than 4 bytes")
    if data[0] != VERSION:
        raise UnsupportedVersion(data[0], VERSION)
    if len(data) < _RESPONSE_HEADER.size or len(data) % 4:
        raise MalformedMessage("PCP: response length must be a multiple of 4, at least 24")
    _, op, _, code, lifetime, epoch, _ = _RESPONSE_HEADER.unpack_from(data)
    if not op & RESPONSE_BIT:
        raise MalformedMessage("PCP: a request, not a response")
    try:
        opcode, result = Opcode(op & 0x7F), ResultCode(code)
    except ValueError:
        raise MalformedMessage("PCP: unknown opcode or result code") from None
    offset = _RESPONSE_HEADER.size
    if opcode is Opcode.ANNOUNCE:
        _skip_options(data, offset)
        return Response(opcode, result, lifetime, epoch)
    if len(data) < offset + _MAP.size:
        raise MalformedMessage("PCP: MAP response shorter than 60 bytes")
    nonce, protocol, _, internal, external, ip = _MAP.unpack_from(data, offset)
    _skip_options(data, offset + _MAP.size)
    return Response(opcode, result, lifetime, epoch, nonce, protocol, internal, external,
                    _unmapped(ip))
