"""Noise transport messages read in large pieces, for the muxer above a py-libp2p Noise session.

py-libp2p 0.8.1 reads each Noise message (`noise/io.py`, `io/msgio.py`) with two
`read_exactly` calls: one `recv` for the 2-byte length, one or more for the body, each through
two trio locks (`io/trio.py`) and a copy into a fresh bytearray. Once the handshake is done,
`NoiseChannel` reads what the socket has (up to `READ_SIZE`), cuts as many messages out of it
as it holds and decrypts them with the session's own cipher states (same keys and nonces, so
the two never run side by side: the muxer is the only reader and writer once it starts).
Writes encrypt and send prefix and ciphertext as one buffer. On the wire nothing changes: a
2-byte big-endian length and a ChaCha20-Poly1305 ciphertext of at most 65,535 bytes
(libp2p noise spec). Over TCP the trio socket stream is used directly (the muxer serialises
writes and has one reader); over anything else (a relayed circuit) the raw connection's own
`read(n)` and `write`.

`secure_channel()` gives a `NoiseChannel` for a py-libp2p Noise session and the session itself
for anything else (a test's fake connection).
"""

from __future__ import annotations

from typing import Any, Protocol

import trio
from cryptography.exceptions import InvalidTag
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from noise.exceptions import NoiseInvalidMessage  # type: ignore[import-untyped]

from meshnat.errors import RemoteProtocolError

READ_SIZE = 256 * 1024
"""Bytes asked of the socket per read: four full Noise messages."""

_MAX_CIPHERTEXT = 65_535
_MAX_PLAINTEXT = _MAX_CIPHERTEXT - 16
_LENGTH = 2


class SecureChannelError(RemoteProtocolError):
    """A Noise message that does not decrypt, or a connection cut inside a message."""


class MessageChannel(Protocol):
    """What the muxer needs: whole decrypted pieces in, bytes out, close."""

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


class NoiseChannel:
    """The transport phase of one Noise session: buffered reads, one send per message."""

    def __init__(self, session: SecureSession, transport: NoiseTransportReadWriter) -> None:
        self._leftover = session._drain(None)  # plaintext the handshake reader held back
        state = transport.noise_state.noise_protocol
        self._encrypt = state.cipher_state_encrypt.encrypt_with_ad
        self._decrypt = state.cipher_state_decrypt.decrypt_with_ad
        # the session keeps only its two cipher states: the noise library's connection object
        # (pattern, key pairs, protocol name) is let go, ~2 KiB per idle connection
        transport.noise_state = _CipherPair(self._encrypt, self._decrypt)
        raw: Any = transport.read_writer.read_write_closer
        socket = _tcp_socket(raw)
        if socket is not None:
            self._receive, self._send = socket.receive_some, socket.send_all
        else:
            self._receive, self._send = raw.read, raw.write
        self._buffer = bytearray()
        self._position = 0

    async def read(self) -> bytes:
        """The plaintext of every whole message buffered (at least one); b"" at end of stream."""
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        while True:
            plain = self._decrypt_buffered()
            if plain:
                return plain
            if self._position:
                del self._buffer[:self._position]
                self._position = 0
            chunk = await self._receive(READ_SIZE)
            if not chunk:
                if self._buffer:
                    raise SecureChannelError("noise: connection ended inside a message")
                return b""
            self._buffer += chunk

    def _decrypt_buffered(self) -> bytes:
        buffer, position, end = self._buffer, self._position, len(self._buffer)
        pieces = []
        with memoryview(buffer) as view:
            while end - position >= _LENGTH:
                size = (buffer[position] << 8) | buffer[position + 1]
                start = position + _LENGTH
                if end - start < size:
                    break
                try:
                    pieces.append(self._decrypt(None, bytes(view[start:start + size])))
                except (NoiseInvalidMessage, InvalidTag) as exc:  # the cipher raises the latter
                    raise SecureChannelError("noise: a message failed authentication") from exc
                position = start + size
        self._position = position
        if position == end and position:
            buffer.clear()
            self._position = 0
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def write(self, data: bytes) -> None:
        """Encrypt and send `data` as one message per 65,519 bytes."""
        for start in range(0, len(data), _MAX_PLAINTEXT):
            piece = data[start:start + _MAX_PLAINTEXT]
            sealed = self._encrypt(None, piece if isinstance(piece, bytes) else bytes(piece))
            await self._send(len(sealed).to_bytes(_LENGTH, "big") + sealed)


class _CipherPair:
    """What py-libp2p's Noise transport reader/writer calls on its state once the handshake is
    done (`encrypt`, `decrypt`), on the same cipher states as the channel."""

    __slots__ = ("_decrypt", "_encrypt")

    def __init__(self, encrypt: Any, decrypt: Any) -> None:
        self._encrypt, self._decrypt = encrypt, decrypt

    def encrypt(self, data: bytes) -> bytes:
        return bytes(self._encrypt(None, data))

    def decrypt(self, data: bytes) -> bytes:
        try:
            return bytes(self._decrypt(None, data))
        except InvalidTag as exc:  # as the noise library's connection reports it
            raise NoiseInvalidMessage("Failed authentication of message") from exc


def _tcp_socket(raw: Any) -> trio.SocketStream | None:
    if isinstance(raw, RawConnection) and isinstance(raw.stream, TrioTCPStream):
        stream = raw.stream.stream
        return stream if isinstance(stream, trio.SocketStream) else None
    return None


def secure_channel(secured_conn: Any) -> MessageChannel:
    """A `NoiseChannel` over a py-libp2p Noise session; anything else as it is."""
    transport = getattr(secured_conn, "conn", None)
    if isinstance(secured_conn, SecureSession) and isinstance(transport,
                                                               NoiseTransportReadWriter):
        return NoiseChannel(secured_conn, transport)
    return secured_conn  # type: ignore[no-any-return]
