"""Sending a batch of QUIC datagrams with as few system calls as the kernel allows.

Linux's UDP generic segmentation offload (`UDP_SEGMENT`, kernel 4.18+) sends consecutive
datagrams of one size to one address in a single `sendmsg`: the kernel cuts the buffer into
datagrams of that size (the last may be shorter), so the wire carries exactly what one
`sendto` per datagram would. A bulk QUIC transfer is ~40,000 datagrams per 50 MiB, one system
call each without it. Where the kernel or the route refuses (EIO, EINVAL, ENOPROTOOPT,
EOPNOTSUPP) the sender falls back to one `sendto` per datagram for good.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import sys

log = logging.getLogger(__name__)

UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
"""The socket option (SOL_UDP) naming the segment size of one sendmsg (linux/udp.h)."""
MAX_SEGMENTS = 64
"""Datagrams per sendmsg (UDP_MAX_SEGMENTS in kernels before 5.7; later ones allow 128)."""
MAX_PAYLOAD = 65_000
"""Bytes per sendmsg: under the 65,535-byte limit of one UDP/IP packet the kernel builds."""
_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})

Datagram = tuple[bytes, tuple[str, int]]


class DatagramSender:
    """Sends datagrams in order on a non-blocking UDP socket, in GSO batches where possible."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.segmentation = sys.platform.startswith("linux")
        """False once the kernel refused a segmented send (or off Linux)."""
        self.calls = 0
        """System calls made (a statistic for tests and benchmarks)."""

    def send(self, datagrams: list[Datagram]) -> int:
        """Send `datagrams` in order; the count sent before the socket buffer was full
        (BlockingIOError: the caller queues the rest). A datagram the kernel refuses for
        another reason (an unreachable peer) is dropped: QUIC's loss recovery decides."""
        i, count = 0, len(datagrams)
        while i < count:
            data, addr = datagrams[i]
            end = self._batch_end(datagrams, i) if self.segmentation else i + 1
            try:
                if end - i > 1:
                    self.sock.sendmsg([b"".join(d for d, _ in datagrams[i:end])],
                                      [(socket.SOL_UDP, UDP_SEGMENT,
                                        struct.pack("=H", len(data)))], 0, addr)
                else:
                    self.sock.sendto(data, addr)
            except BlockingIOError:
                return i
            except OSError as exc:
                if end - i > 1 and exc.errno in _REFUSED:
                    log.debug("quic: no UDP segmentation offload here (%s); sending one "
                              "datagram per call", exc)
                    self.segmentation = False
                    continue
                log.debug("quic: sending to %s failed: %s", addr, exc)
            finally:
                self.calls += 1
            i = end
        return count

    @staticmethod
    def _batch_end(datagrams: list[Datagram], start: int) -> int:
        """The end of the run from `start` that one segmented send can carry: one address,
        segments of the first's size, only the last one shorter."""
        size = len(datagrams[start][0])
        addr = datagrams[start][1]
        total, end = size, start + 1
        while end < len(datagrams) and end - start < MAX_SEGMENTS:
            data, to = datagrams[end]
            if to != addr or len(data) > size or total + len(data) > MAX_PAYLOAD:
                break
            total += len(data)
            end += 1
            if len(data) < size:
                break
        return end
