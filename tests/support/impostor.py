"""Peers that claim an identity they cannot prove: a forged QUIC certificate, plaintext only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import multiaddr
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, PublicKey
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.transport.quic.security import (
    LIBP2P_TLS_EXTENSION_OID,
    CertificateGenerator,
    LibP2PExtensionHandler,
    TLSConfig,
)


def forged_certificate(victim: PublicKey) -> TLSConfig:
    """A libp2p TLS certificate naming `victim`'s key, with 64 garbage bytes as its signature."""
    cert_key = ec.generate_private_key(ec.SECP256R1())
    extension = LibP2PExtensionHandler._create_asn1_der_extension(victim.serialize(),
                                                                   os.urandom(64))
    victim_id = ID.from_pubkey(victim)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, victim_id.to_base58())])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(cert_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(LIBP2P_TLS_EXTENSION_OID, extension),
                       critical=False)
        .sign(cert_key, hashes.SHA256()))
    return TLSConfig(certificate=certificate, private_key=cert_key, peer_id=victim_id)


@contextmanager
def quic_certificates_claiming(victim: PublicKey) -> Iterator[None]:
    """While active, QUIC transports built (hosts created) present a forged `victim` cert."""
    original = CertificateGenerator.generate_certificate

    def forge(self: Any, *args: Any, **kwargs: Any) -> TLSConfig:
        return forged_certificate(victim)

    CertificateGenerator.generate_certificate = forge  # type: ignore[method-assign]
    try:
        yield
    finally:
        CertificateGenerator.generate_certificate = original  # type: ignore[method-assign]


def plaintext_host(key_pair: KeyPair | None = None) -> IHost:
    """A TCP host on 127.0.0.1 that speaks only /plaintext/2.0.0 (which proves no key)."""
    key_pair = key_pair or create_new_key_pair()
    insecure = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
    return new_host(key_pair=key_pair, sec_opt=insecure,
                    listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")])
