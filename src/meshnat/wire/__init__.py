"""The one wire format of every meshnat protocol: a strict CBOR envelope, framed for streams
(uvarint length prefix) and for UDP datagrams (magic prefix)."""

from meshnat.wire.codec import (
    MAX_MESSAGE_SIZE,
    TXID_SIZE,
    WIRE_VERSION,
    Fields,
    Message,
    decode,
    encode,
    new_txid,
)
from meshnat.wire.frames import (
    DATAGRAM_MAGIC,
    MAX_DATAGRAM_SIZE,
    frame_datagram,
    frame_stream,
    is_meshnat_datagram,
    unframe_datagram,
)

__all__ = [
    "DATAGRAM_MAGIC",
    "MAX_DATAGRAM_SIZE",
    "MAX_MESSAGE_SIZE",
    "TXID_SIZE",
    "WIRE_VERSION",
    "Fields",
    "Message",
    "decode",
    "encode",
    "frame_datagram",
    "frame_stream",
    "is_meshnat_datagram",
    "new_txid",
    "unframe_datagram",
]
