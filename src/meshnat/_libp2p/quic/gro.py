"""Receiving a batch of QUIC datagrams with as few system calls as the kernel allows.

With Linux's UDP generic receive offload (`UDP_GRO`, kernel 5.0+) on a socket, the kernel may
hand consecutive datagrams of one size from one source to one `recvmsg` as a single buffer,
naming the segment size in a control message (SOL_UDP, UDP_GRO); the receiver cuts it back
into the datagrams the sender sent (the last may be shorter). A GSO batch from a peer on this
host or across veth links (the NAT lab) arrives whole, one call instead of up to 64; on a real
NIC, GRO coalesces what arrives back to back. Where the kernel refuses the option (older
kernels, other systems) the receiver reads one datagram per `recvfrom`, as before.
"""

from __future__ import annotations

import logging
import socket
import struct
import sys

log = logging.getLogger(__name__)

UDP_GRO = getattr(socket, "UDP_GRO", 104)
"""The socket option (SOL_UDP) turning receive coalescing on, and its control message."""
BUFFER = 65_536
"""Bytes per read: one coalesced buffer is at most one IP packet's 65,535."""
_CONTROL = socket.CMSG_SPACE(struct.calcsize("=i"))
COALESCE = True
"""False: receivers made after read one datagram per call (a benchmark's baseline)."""


class DatagramReceiver:
    """Reads datagrams from a non-blocking UDP socket, coalesced batches split apart."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.coalescing = False
        """True while the kernel took UDP_GRO on this socket."""
        if COALESCE and sys.platform.startswith("linux"):
            try:
                sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
                self.coalescing = True
            except OSError as exc:
                log.debug("quic: no UDP receive offload here (%s); one datagram per call", exc)
        self.calls = 0
        """System calls that returned data (a statistic for tests and benchmarks)."""

    def receive(self) -> tuple[list[bytes], tuple[str, int]]:
        """The next datagrams from one source, in order (BlockingIOError when none waits;
        other OSErrors, ICMP errors among them, as `recvfrom` raises them). A coalesced buffer
        the read cut short (MSG_TRUNC, not expected at BUFFER bytes) yields its whole
        segments only."""
        if not self.coalescing:
            data, addr = self.sock.recvfrom(BUFFER)
            self.calls += 1
            return [data], addr
        data, ancdata, flags, addr = self.sock.recvmsg(BUFFER, _CONTROL)
        self.calls += 1
        size = segment_size(ancdata)
        if size <= 0 or len(data) <= size:
            return ([] if flags & socket.MSG_TRUNC and size > 0 else [data]), addr
        datagrams = [data[i:i + size] for i in range(0, len(data), size)]
        if flags & socket.MSG_TRUNC and len(datagrams[-1]) < size:
            datagrams.pop()  # the cut-off tail is no datagram the peer sent
        return datagrams, addr


def segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size a UDP_GRO control message names, 0 if none (one datagram)."""
    for level, kind, value in ancdata:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            size: int = struct.unpack("=i", value[:4])[0]
            return size
    return 0
