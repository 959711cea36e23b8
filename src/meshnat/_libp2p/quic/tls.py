"""libp2p TLS on qh3: the certificate, mutual authentication, the identity check in the handshake.

The libp2p TLS spec: each side presents a self-signed certificate whose extension (OID
1.3.6.1.4.1.53594.1.1) carries SignedKey{libp2p public key, its signature over
"libp2p-tls-handshake:" + the certificate's SubjectPublicKeyInfo}; both sides present one.

qh3's TLS server never asks for a client certificate (aioquic's `_request_client_certificate`
was dropped). `Libp2pTlsContext` adds that: the server's first flight carries a
CertificateRequest before its Certificate, and the client's Certificate and CertificateVerify
are read (and checked) before its Finished. Both roles refuse the handshake with a TLS alert
unless the peer's certificate proves a libp2p identity (`identity.proven_peer_id`: the
signature is verified), so a forged certificate never yields a connection.
"""

from __future__ import annotations

import contextvars
import datetime
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from libp2p.crypto.keys import PrivateKey
from libp2p.peer.id import ID
from libp2p.transport.quic.exceptions import QUICPeerVerificationError
from libp2p.transport.quic.security import LIBP2P_TLS_EXTENSION_OID, LibP2PExtensionHandler
from qh3 import tls as qtls
from qh3._hazmat import Buffer, SignatureError, verify_with_public_key
from qh3._hazmat import Certificate as X509Certificate
from qh3.quic.configuration import QuicConfiguration

from meshnat._libp2p.identity import SIGNATURE_PREFIX, proven_peer_id

ALPN = "libp2p"
_CERTIFICATE_DAYS = 365


def libp2p_certificate(identity: PrivateKey) -> tuple[bytes, bytes]:
    """A fresh libp2p TLS certificate (DER) and its P-256 key (PEM) for `identity`."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    signed_key = LibP2PExtensionHandler._create_asn1_der_extension(
        identity.get_public_key().serialize(), identity.sign(SIGNATURE_PREFIX + spki))
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_CERTIFICATE_DAYS))
            .add_extension(x509.UnrecognizedExtension(LIBP2P_TLS_EXTENSION_OID, signed_key),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.DER),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def configuration(certificate: tuple[bytes, bytes], *, is_client: bool, max_stream_data: int,
                  max_data: int, idle_timeout: float) -> QuicConfiguration:
    """A qh3 configuration for libp2p: QUIC v1, ALPN "libp2p", our certificate on both sides.

    Chain verification is off (libp2p certificates are self-signed); `Libp2pTlsContext`
    checks the libp2p extension instead.
    """
    config = QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN],
                               max_stream_data=max_stream_data, max_data=max_data,
                               idle_timeout=idle_timeout, verify_mode=ssl.CERT_NONE)
    config.certificate = X509Certificate(certificate[0])
    config.private_key = qtls.load_pem_private_key(certificate[1])
    return config


# --- mutual authentication in qh3's TLS -----------------------------------------------------

_EXPECT_CERTIFICATE = 100
_EXPECT_CERTIFICATE_VERIFY = 101
_CLIENT_CONTEXT = b"TLS 1.3, client CertificateVerify"
_requesting: contextvars.ContextVar[Libp2pTlsContext | None] = contextvars.ContextVar(
    "meshnat_quic_requesting_certificate", default=None)
_push_certificate = qtls.push_certificate


def _push_certificate_and_request(buf: Buffer, certificate: qtls.Certificate) -> None:
    """qh3's push_certificate; in a server hello of ours, a CertificateRequest goes first.

    Both land in one transcript-hash update, which hashes the same bytes as two.
    """
    context = _requesting.get()
    if context is not None:
        _requesting.set(None)
        buf.push_uint8(qtls.HandshakeType.CERTIFICATE_REQUEST)
        with qtls.push_block(buf, 3):
            qtls.push_opaque(buf, 1, b"")
            with qtls.push_block(buf, 2):
                buf.push_uint16(qtls.ExtensionType.SIGNATURE_ALGORITHMS)
                with qtls.push_block(buf, 2):
                    qtls.push_list(buf, 2, buf.push_uint16, context._signature_algorithms)
        context._keep_hash_before_each_update()
    _push_certificate(buf, certificate)


qtls.push_certificate = _push_certificate_and_request  # inert outside Libp2pTlsContext


class Libp2pTlsContext(qtls.Context):
    """qh3's TLS context with libp2p's rules: the server asks for (and both sides check) the
    peer's certificate; `proven_peer` is the libp2p identity it proved."""

    proven_peer: ID | None = None
    _hash_before: Any = None

    def _server_handle_hello(self, input_buf: Buffer, initial_buf: Buffer,
                             handshake_buf: Buffer, onertt_buf: Buffer) -> None:
        token = _requesting.set(self)
        try:
            super()._server_handle_hello(input_buf, initial_buf, handshake_buf, onertt_buf)
        finally:
            _requesting.reset(token)
        schedule = self.key_schedule
        if self._hash_before is None or schedule is None:
            raise qtls.AlertHandshakeFailure("no certificate request was sent")
        del schedule.update_hash  # back to the class's method
        if not self._alps_negotiated:  # qh3 hashed the client Finished it expected: undo
            schedule.hash = self._hash_before
        self.state = _EXPECT_CERTIFICATE  # type: ignore[assignment]

    def _keep_hash_before_each_update(self) -> None:
        schedule = self.key_schedule
        if schedule is None:
            raise qtls.AlertHandshakeFailure("no key schedule at the server's Certificate")

        def update_hash(data: bytes) -> None:
            self._hash_before = schedule.hash.copy()
            schedule.hash.update(data)

        schedule.update_hash = update_hash  # type: ignore[method-assign]
        self._hash_before = schedule.hash.copy()

    def handle_message(self, input_data: bytes, output_buf: dict[qtls.Epoch, Buffer],
                       epoch: int = -1) -> None:
        if self.state not in (_EXPECT_CERTIFICATE, _EXPECT_CERTIFICATE_VERIFY):
            super().handle_message(input_data, output_buf, epoch)
            return
        self._receive_buffer += input_data
        while self.state in (_EXPECT_CERTIFICATE, _EXPECT_CERTIFICATE_VERIFY):
            if len(self._receive_buffer) < 4:
                return
            length = 4 + int.from_bytes(self._receive_buffer[1:4], "big")
            if len(self._receive_buffer) < length:
                return
            if epoch >= 0 and epoch != qtls.Epoch.HANDSHAKE:
                raise qtls.AlertUnexpectedMessage
            message = self._receive_buffer[:length]
            self._receive_buffer = self._receive_buffer[length:]
            if self.state == _EXPECT_CERTIFICATE:
                self._server_handle_client_certificate(Buffer(data=message))
            else:
                self._server_handle_client_certificate_verify(Buffer(data=message))
        super().handle_message(b"", output_buf, epoch)

    def _server_handle_client_certificate(self, input_buf: Buffer) -> None:
        certificate = qtls.pull_certificate(input_buf)
        if not certificate.certificates:
            raise qtls.AlertBadCertificate("libp2p requires a client certificate")
        if self.key_schedule is None:
            raise qtls.AlertUnexpectedMessage
        self.key_schedule.update_hash(input_buf.data)
        self._peer_certificate = X509Certificate(certificate.certificates[0][0])
        self._peer_certificate_chain = []
        self.state = _EXPECT_CERTIFICATE_VERIFY  # type: ignore[assignment]

    def _server_handle_client_certificate_verify(self, input_buf: Buffer) -> None:
        verify = qtls.pull_certificate_verify(input_buf)
        schedule, peer, key = self.key_schedule, self._peer_certificate, self._dec_key
        if schedule is None or peer is None or key is None:
            raise qtls.AlertUnexpectedMessage
        if verify.algorithm not in self._signature_algorithms:
            raise qtls.AlertDecryptError("CertificateVerify with an algorithm not offered")
        try:
            verify_with_public_key(peer.public_key(), verify.algorithm,
                                   schedule.certificate_verify_data(_CLIENT_CONTEXT),
                                   verify.signature)
        except SignatureError as exc:
            raise qtls.AlertDecryptError("client CertificateVerify does not verify") from exc
        self._prove_peer()
        schedule.update_hash(input_buf.data)
        if not self._alps_negotiated:  # as qh3's own server hello does without client auth
            self._expected_verify_data = schedule.finished_verify_data(key)
            finished = Buffer(capacity=64)
            qtls.push_finished(finished, qtls.Finished(verify_data=self._expected_verify_data))
            schedule.update_hash(finished.data)
        self.state = qtls.State.SERVER_EXPECT_FINISHED

    def _client_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._client_handle_certificate_verify(input_buf)
        self._prove_peer()

    def _prove_peer(self) -> None:
        if self._peer_certificate is None:
            raise qtls.AlertBadCertificate("no certificate")
        try:
            der = self._peer_certificate.public_bytes()
            self.proven_peer = proven_peer_id(x509.load_der_x509_certificate(der))
        except (QUICPeerVerificationError, ValueError) as exc:
            raise qtls.AlertBadCertificate("the certificate proves no libp2p identity") from exc
