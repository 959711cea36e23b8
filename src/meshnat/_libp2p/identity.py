"""One identity rule: a connection's remote peer id counts only when a checked signature proved it.

py-libp2p 0.8.1 breaks it twice, and both are mended here:

- QUIC: `PeerAuthenticator.verify_peer_certificate` calls `public_key.verify(...)` and ignores
  the bool it returns (libp2p key classes return False on a bad signature, they do not raise),
  so a certificate carrying another peer's public key and garbage is accepted as that peer, by
  dialler and listener alike. `install()` wraps it: the libp2p TLS extension's signature over
  the certificate key is checked here first, whatever py-libp2p does after (a release that
  fixes it keeps this check too). An initiator that got no certificate is refused as well.
- Security protocols: `new_host()` without `sec_opt` offers `/plaintext/2.0.0` and secio beside
  Noise; plaintext proves no key. `secure_transports()` is Noise alone, for every host meshnat
  builds (relay circuits are upgraded by the same swarm upgrader, so they get Noise too).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from libp2p.abc import ISecureTransport
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.transport.quic.connection import QUICConnection
from libp2p.transport.quic.exceptions import QUICCertificateError, QUICPeerVerificationError
from libp2p.transport.quic.security import (
    LIBP2P_TLS_EXTENSION_OID,
    LibP2PExtensionHandler,
    PeerAuthenticator,
)

SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
"""What the libp2p key signs in the TLS extension, before the certificate's key (tls spec)."""


def secure_transports(key_pair: KeyPair) -> Mapping[TProtocol, ISecureTransport]:
    """The security protocols a meshnat host offers and accepts: Noise, nothing else."""
    noise_key = create_x25519_key_pair().private_key
    return {TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(key_pair, noise_privkey=noise_key)}


def proven_peer_id(certificate: x509.Certificate) -> ID:
    """The peer id a libp2p TLS certificate proves: its extension's key signed the cert's key.

    Raises QUICPeerVerificationError when the extension is missing, malformed, or its
    signature does not verify. The message names no value taken from the certificate.
    """
    try:
        extension = certificate.extensions.get_extension_for_oid(LIBP2P_TLS_EXTENSION_OID)
        public_key, signature = LibP2PExtensionHandler.parse_signed_key_extension(extension)
        cert_key = certificate.public_key().public_bytes(
            encoding=serialization.Encoding.DER,
            format=serialization.PublicFormat.SubjectPublicKeyInfo)
        signed = public_key.verify(SIGNATURE_PREFIX + cert_key, signature)
    except (x509.ExtensionNotFound, QUICCertificateError, UnsupportedAlgorithm, ValueError,
            TypeError) as exc:  # hostile bytes; anything else is refused by py-libp2p's caller
        raise QUICPeerVerificationError("libp2p certificate extension is unusable") from exc
    if signed is not True:
        raise QUICPeerVerificationError("libp2p certificate extension signature does not verify")
    return ID.from_pubkey(public_key)


def install() -> None:
    """Put the signature check in front of py-libp2p's QUIC peer verification (idempotent)."""
    original = PeerAuthenticator.verify_peer_certificate
    if getattr(original, "_meshnat_checked", False):
        return

    @functools.wraps(original)
    def verify_peer_certificate(self: Any, certificate: x509.Certificate,
                                expected_peer_id: ID | None = None) -> ID:
        proven = proven_peer_id(certificate)
        if expected_peer_id is not None and proven != expected_peer_id:
            raise QUICPeerVerificationError("peer id does not match the one dialled")
        claimed: ID = original(self, certificate, expected_peer_id)
        if claimed != proven:
            raise QUICPeerVerificationError("py-libp2p derived another peer id")
        return proven

    verify_peer_certificate._meshnat_checked = True  # type: ignore[attr-defined]
    PeerAuthenticator.verify_peer_certificate = verify_peer_certificate  # type: ignore[method-assign]

    original_connection_check = QUICConnection._verify_peer_identity_with_security

    async def verify_connection(self: Any) -> ID:
        """py-libp2p lets an initiator without a peer certificate through (None)."""
        peer: ID | None = await original_connection_check(self)
        if peer is None:
            raise QUICPeerVerificationError("the peer proved no identity")
        return peer

    setattr(QUICConnection, "_verify_peer_identity_with_security", verify_connection)  # noqa: B010
