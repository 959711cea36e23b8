"""Framing of encoded messages: uvarint length prefix on streams, magic prefix on UDP.

The datagram magic starts with 0x3F: QUIC v1 packets always have the fixed bit 0x40 set
(RFC 9000 §17) and STUN starts with 0x00-0x03 (RFC 7983), so meshnat datagrams share a UDP
port with QUIC (and STUN) without ambiguity.
"""

from __future__ import annotations

from meshnat.errors import LocalProtocolError
from meshnat.wire.codec import MAX_MESSAGE_SIZE

DATAGRAM_MAGIC = b"\x3fMNT"
MAX_DATAGRAM_SIZE = 1200
"""Largest meshnat datagram, magic included: fits any IPv6 path without fragmentation."""


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128, as multiformats' unsigned-varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def frame_stream(payload: bytes) -> bytes:
    if len(payload) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return encode_uvarint(len(payload)) + payload


def frame_datagram(payload: bytes) -> bytes:
    data = DATAGRAM_MAGIC + payload
    if len(data) > MAX_DATAGRAM_SIZE:
        raise LocalProtocolError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM_SIZE}")
    return data


def is_meshnat_datagram(data: bytes) -> bool:
    return data[: len(DATAGRAM_MAGIC)] == DATAGRAM_MAGIC


def unframe_datagram(data: bytes) -> bytes | None:
    """The payload of a meshnat datagram, or None for anything else (dropped by callers)."""
    if not is_meshnat_datagram(data) or len(data) > MAX_DATAGRAM_SIZE:
        return None
    return data[len(DATAGRAM_MAGIC) :]
