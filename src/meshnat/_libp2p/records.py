"""libp2p signed envelopes and peer records, as meshnat's address records use them.

py-libp2p 0.8.1 ships both (`libp2p.peer.envelope`, `libp2p.peer.peer_record`); what it lacks,
and this module adds (docs/protocols/records.md):

- `consume_envelope` never checks that the record's peer id belongs to the signing key, so anyone
  can sign a record naming someone else. `open_envelope` returns the signer's peer id and the
  caller compares.
- `seal_record` only signs PeerRecords under the libp2p domain; meshnat signs its own payload
  under its own domain with the same envelope format and `make_unsigned`.
- `addrs_from_protobuf` silently drops addresses it cannot parse; `decode_peer_record` rejects
  the record instead.
- Protobuf parsing keeps unknown fields and accepts any length: inputs are bounded first and must
  re-serialise to the exact bytes received (one canonical encoding, nothing smuggled).
"""

from __future__ import annotations

from collections.abc import Sequence

import multiaddr
from google.protobuf.message import DecodeError
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.keys import PrivateKey
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer import envelope as libp2p_envelope
from libp2p.peer.id import ID
from libp2p.peer.pb import crypto_pb2, envelope_pb2, peer_record_pb2
from libp2p.peer.peer_record import PeerRecord
from multiaddr.exceptions import Error as MultiaddrError

from meshnat.errors import ForgedRecord, MalformedMessage, MessageTooLarge
from meshnat.wire.codec import describe

RECORD_DOMAIN = "meshnat-address-record"
"""Signature domain: a libp2p peer-record envelope signed by the same key does not verify here."""
RECORD_PAYLOAD_TYPE = b"/meshnat/record/1"
MAX_ENVELOPE_SIZE = 2048
"""Largest signed record accepted (an Ed25519 envelope with 16 addresses fits in ~1.3 KiB)."""
MAX_RECORD_ADDRS = 16

_Parseable = envelope_pb2.Envelope | peer_record_pb2.PeerRecord | crypto_pb2.PublicKey


def _parse_canonical(message: _Parseable, data: bytes, what: str) -> None:
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise MalformedMessage(f"{what}: not protobuf: {str(exc)[:60]}") from exc
    message.DiscardUnknownFields()  # kept by the parser and re-serialised otherwise
    if message.SerializeToString(deterministic=True) != data:
        raise MalformedMessage(f"{what}: unknown fields or a non-canonical encoding")


def seal(key: PrivateKey, payload: bytes) -> bytes:
    """Sign `payload` with an identity key into a libp2p envelope (wire bytes)."""
    unsigned = libp2p_envelope.make_unsigned(RECORD_DOMAIN, RECORD_PAYLOAD_TYPE, payload)
    env = libp2p_envelope.Envelope(key.get_public_key(), RECORD_PAYLOAD_TYPE, payload,
                                   key.sign(unsigned))
    data = env.marshal_envelope()
    if len(data) > MAX_ENVELOPE_SIZE:
        raise MessageTooLarge(len(data), MAX_ENVELOPE_SIZE)
    return data


def open_envelope(data: bytes) -> tuple[ID, bytes]:
    """Verify a meshnat record envelope: (the signer's peer id, the signed payload).

    Raises MessageTooLarge, MalformedMessage (not an envelope, not an Ed25519 key, wrong payload
    type) or ForgedRecord (the signature does not verify under meshnat's domain).
    """
    if len(data) > MAX_ENVELOPE_SIZE:
        raise MessageTooLarge(len(data), MAX_ENVELOPE_SIZE)
    env = envelope_pb2.Envelope()
    _parse_canonical(env, data, "envelope")
    if env.public_key.Type != crypto_pb2.KeyType.Ed25519 or len(env.public_key.Data) != 32:
        raise MalformedMessage("envelope: only Ed25519 identity keys are accepted")
    if env.payload_type != RECORD_PAYLOAD_TYPE:
        raise MalformedMessage(f"envelope: payload type {describe(env.payload_type)} is not a "
                               "meshnat address record")
    try:
        key = Ed25519PublicKey.from_bytes(env.public_key.Data)
        unsigned = libp2p_envelope.make_unsigned(RECORD_DOMAIN, env.payload_type, env.payload)
        valid = key.verify(unsigned, env.signature)
    except (ValueError, TypeError, BaseLibp2pError) as exc:
        raise ForgedRecord(f"signature check failed: {str(exc)[:60]}") from exc
    if not valid:
        raise ForgedRecord("the signature does not verify against the envelope's key")
    return ID.from_pubkey(key), bytes(env.payload)


def encode_peer_record(peer: ID, seq: int, addrs: Sequence[multiaddr.Multiaddr]) -> bytes:
    """A libp2p PeerRecord (peer id, sequence number, addresses) in its protobuf form."""
    return PeerRecord(peer, list(addrs), seq).marshal_record()


def decode_peer_record(data: bytes) -> tuple[ID, int, tuple[multiaddr.Multiaddr, ...]]:
    """Parse a PeerRecord strictly: every address must parse, at most MAX_RECORD_ADDRS."""
    msg = peer_record_pb2.PeerRecord()
    _parse_canonical(msg, data, "peer record")
    if len(msg.addresses) > MAX_RECORD_ADDRS:
        raise MalformedMessage(f"peer record: more than {MAX_RECORD_ADDRS} addresses")
    try:
        peer = ID(msg.peer_id)
        addrs = tuple(multiaddr.Multiaddr(a.multiaddr) for a in msg.addresses)
    except (MultiaddrError, ValueError, TypeError, BaseLibp2pError) as exc:
        # multiaddr's errors quote the whole input: keep only their start
        raise MalformedMessage(f"peer record: bad peer id or address: {str(exc)[:60]}") from exc
    return peer, msg.seq, addrs
