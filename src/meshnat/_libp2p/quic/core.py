"""The qh3 connection meshnat drives: libp2p TLS, and the anti-amplification limit kept here.

qh3 2.1 counts only the bytes of packets it could decrypt toward a server's anti-amplification
budget (RFC 9000 8.1: three times what the unvalidated address sent). aioquic pads its first
datagram with zero bytes after the Initial packet (1200 bytes, 504 of them the packet), so a
qh3 server credits 504, has 1,512 bytes for a ~2,200-byte first flight, and raises "packet
builder capacity exhausted" instead of waiting: py-libp2p's QUIC could not connect. Here the
core is told the address is validated and the limit is applied to whole datagrams instead:
until the handshake completes (the client's Handshake packets prove its address), a server
sends at most three times the bytes it received; what does not fit is dropped and resent by
QUIC's loss recovery once the client sends more.

qh3 2.1's native core keeps the STREAM frames it has reserved but not yet packed across
`poll_transmit` calls while the congestion window is full (after a PTO probe, one for every
stream with something to send), and removes a stream once both directions are done, when its
StreamFinished event is taken from the core. A reservation can outlive its stream: a PTO copies
in-flight data of a stream for the probes, the copy stays reserved behind a full window, the
original is then acknowledged, the peer's FIN arrives, and the stream is removed; the next
`poll_transmit` packs the stale frame and raises ValueError("reserved stream is missing"),
dropping the packet it built and leaving the other reservations of that batch half done. Here,
once the handshake is complete, a batch of datagrams is fed to the core and what it then has
to send (the window the acknowledgments freed) is packed *before* its events are taken, so the
reservations are committed while their streams still exist. A window still full after that
keeps the risk; `QuicConn` ends the connection cleanly if qh3 fails anyway.
"""

from __future__ import annotations

from typing import Any

from libp2p.peer.id import ID
from qh3.quic.connection import QuicConnection
from qh3.quic.tls_bridge import QuicTlsBridge

from meshnat._libp2p.quic.tls import Libp2pTlsContext

AMPLIFICATION = 3

Address = tuple[str, int]


class Libp2pQuicConnection(QuicConnection):
    """A qh3 connection with `Libp2pTlsContext` and a datagram-counted amplification limit."""

    received_bytes = 0
    sent_bytes = 0
    withheld = 0
    """Datagrams not sent because the amplification limit was reached."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._packed: list[tuple[bytes, Address]] = []
        """Datagrams packed while receiving (see the module docstring), sent by the next flush."""
        self.holding = False
        """While True (after the handshake) the core's events stay in the core: its streams'
        data is not taken, so no flow-control credit is granted for it (qh3's core grants
        credit as its events are taken), while acknowledgments and everything else in the
        datagrams are still processed. `release()` takes them again."""

    def _drain_core(self) -> None:
        if self.holding and self._handshake_complete:
            return
        super()._drain_core()

    def release(self) -> None:
        """Stop holding events and take those the core kept meanwhile."""
        self.holding = False
        if self._core is not None:
            super()._drain_core()

    def _create_tls(self, remote_source_cid: bytes | None) -> QuicTlsBridge:
        bridge = super()._create_tls(remote_source_cid)
        bridge.tls.__class__ = Libp2pTlsContext
        return bridge

    def _create_core(self, remote_addr: Address, initial_dcid: bytes, now: float) -> None:
        """qh3's core, told the address is validated (qh3 derives that from a Retry id; the
        id is put back before the TLS transport parameters are built from it)."""
        retry, self._retry_source_connection_id = self._retry_source_connection_id, b"-"
        try:
            super()._create_core(remote_addr, initial_dcid, now)
        finally:
            self._retry_source_connection_id = retry

    @property
    def proven_peer(self) -> ID | None:
        """The libp2p identity the peer's certificate proved (None before that)."""
        context = self.tls
        return context.proven_peer if isinstance(context, Libp2pTlsContext) else None

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.received_bytes += len(data)
        super().receive_datagram(data, addr, now)

    def receive_many_datagrams(self, datagrams: list[bytes], addr: Address, now: float) -> None:
        core = self._core
        if core is None or not self._handshake_complete or not datagrams:
            # qh3 feeds these to receive_datagram one by one, which counts each
            super().receive_many_datagrams(datagrams, addr, now)
            return
        self.received_bytes += sum(map(len, datagrams))
        # qh3's own method, with the reservations packed before the events are taken
        address = self._normalize_address(addr)
        for data in datagrams:
            self._log_datagram("datagrams_received", data)
        self._call_core(core.receive_many_datagrams, datagrams, address, now)
        self._packed += super().datagrams_to_send(now)
        self._drain_core()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        datagrams, self._packed = self._packed, []
        datagrams += super().datagrams_to_send(now)
        if self._is_client or self._handshake_complete:
            return datagrams
        allowed: list[tuple[bytes, Address]] = []
        for data, addr in datagrams:
            if self.sent_bytes + len(data) > AMPLIFICATION * self.received_bytes:
                self.withheld += 1
                continue
            self.sent_bytes += len(data)
            allowed.append((data, addr))
        return allowed
