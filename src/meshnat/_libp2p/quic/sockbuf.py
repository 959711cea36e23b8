"""The QUIC socket's kernel buffers, as large as this process may make them.

A QUIC receiver that falls behind (a loaded CPU, a slow reader) loses what overflows its UDP
receive buffer, and every loss halves the sender's congestion window; the relayed path runs on
TCP, whose kernel flow control never loses. So the endpoint asks for `SOCKET_BUFFER` bytes each
way. `SO_RCVBUF`/`SO_SNDBUF` are capped by `net.core.rmem_max`/`wmem_max` (212,992 bytes on a
stock Linux), which a user may never have raised; with CAP_NET_ADMIN (root, the lab's nodes)
`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` pass the cap, so those are tried first. Where the kernel gives
less than asked, one log line says so (once per process).
"""

from __future__ import annotations

import contextlib
import logging
import socket

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 << 20
"""Bytes asked for in each direction (the kernel reports twice what it grants)."""
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_OPTIONS = ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF))
_capped_logged = False


def enlarge_buffers(sock: socket.socket, size: int | None = None) -> tuple[int, int]:
    """Ask for `size` (default `SOCKET_BUFFER`) bytes of receive and send buffer on `sock`,
    forcing past the sysctl cap where allowed; the (receive, send) sizes the kernel reports."""
    global _capped_logged
    size = SOCKET_BUFFER if size is None else size
    granted: list[int] = []
    for force, plain in _OPTIONS:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:  # EPERM without CAP_NET_ADMIN; ENOPROTOOPT off Linux
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
        granted.append(sock.getsockopt(socket.SOL_SOCKET, plain))
    receive, send = granted
    # Linux reports double the size set (its bookkeeping overhead); others report it as set.
    if min(receive, send) < size and not _capped_logged:
        _capped_logged = True
        log.info("quic: socket buffers capped at %d/%d bytes (asked %d; raise "
                 "net.core.rmem_max/wmem_max for fewer drops under load)", receive, send, size)
    return receive, send
