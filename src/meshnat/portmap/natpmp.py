"""NAT-PMP (RFC 6886) messages: encoding and strict decoding (pure).

A client asks the gateway (UDP port 5351) for its external address (opcode 0) or for a
mapping of one internal port (opcode 1 UDP, 2 TCP) with a lifetime; lifetime 0 deletes it.
Every response carries the gateway's epoch (seconds since its mapping table was last reset)
and a result code. Responses are 12 bytes (external address) or 16 bytes (mapping); anything
else raises MalformedMessage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from meshnat.errors import MalformedMessage, UnsupportedVersion

VERSION = 0
SERVER_PORT = 5351
"""RFC 6886 §3.1: requests go to the gateway's UDP port 5351; answers come from it."""
ANNOUNCE_GROUP, ANNOUNCE_PORT = "224.0.0.1", 5350
"""RFC 6886 §3.2.1: a gateway that restarts multicasts its external address to 224.0.0.1:5350."""
RESPONSE_BIT = 128

_MAP_REQUEST = struct.Struct("!BBHHHI")
_ADDRESS_RESPONSE = struct.Struct("!BBHI4s")
_MAP_RESPONSE = struct.Struct("!BBHIHHI")


class Opcode(IntEnum):
    EXTERNAL_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class ResultCode(IntEnum):
    """RFC 6886 §3.5."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


def map_opcode(transport: str) -> Opcode:
    """The mapping opcode of `transport` ("udp" or "tcp")."""
    return Opcode.MAP_UDP if transport == "udp" else Opcode.MAP_TCP


def external_address_request() -> bytes:
    return bytes((VERSION, Opcode.EXTERNAL_ADDRESS))


def map_request(transport: str, internal_port: int, suggested_port: int, lifetime: int) -> bytes:
    """Ask for (lifetime > 0) or delete (lifetime 0, suggested port 0) one mapping."""
    return _MAP_REQUEST.pack(VERSION, map_opcode(transport), 0, internal_port, suggested_port,
                             lifetime)


@dataclass(frozen=True, slots=True)
class AddressResponse:
    result: ResultCode
    epoch: int
    external_ip: IPv4Address


@dataclass(frozen=True, slots=True)
class MapResponse:
    opcode: Opcode
    result: ResultCode
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


def _result(value: int) -> ResultCode:
    try:
        return ResultCode(value)
    except ValueError:
        raise MalformedMessage("NAT-PMP: unknown result code") from None


def decode_response(data: bytes) -> AddressResponse | MapResponse:
    """One NAT-PMP response. Raises MalformedMessage (or UnsupportedVersion) on anything that
    is not exactly one well-formed response."""
    if len(data) < 4:
        raise MalformedMessage("NAT-PMP: response shorter than 4 bytes")
    if data[0] != VERSION:
        raise UnsupportedVersion(data[0], VERSION)
    op = data[1]
    if op < RESPONSE_BIT:
        raise MalformedMessage("NAT-PMP: a request, not a response")
    try:
        opcode = Opcode(op - RESPONSE_BIT)
    except ValueError:
        raise MalformedMessage("NAT-PMP: unknown opcode") from None
    result = _result(int.from_bytes(data[2:4], "big"))
    if result is not ResultCode.SUCCESS and len(data) in (8, 12, 16):
        # RFC 6886 §3.5: an error response may be truncated after the epoch.
        epoch = int.from_bytes(data[4:8], "big")
        if opcode is Opcode.EXTERNAL_ADDRESS:
            return AddressResponse(result, epoch, IPv4Address(0))
        return MapResponse(opcode, result, epoch, 0, 0, 0)
    if opcode is Opcode.EXTERNAL_ADDRESS:
        if len(data) != _ADDRESS_RESPONSE.size:
            raise MalformedMessage("NAT-PMP: external address response must be 12 bytes")
        _, _, _, epoch, ip = _ADDRESS_RESPONSE.unpack(data)
        return AddressResponse(result, epoch, IPv4Address(ip))
    if len(data) != _MAP_RESPONSE.size:
        raise MalformedMessage("NAT-PMP: mapping response must be 16 bytes")
    _, _, _, epoch, internal, external, lifetime = _MAP_RESPONSE.unpack(data)
    return MapResponse(opcode, result, epoch, internal, external, lifetime)
