"""py-libp2p's TCP dial from a bound source port, without its socket leak on cancellation.

`libp2p.transport.tcp.tcp._open_tcp_stream_from` (used for TCP hole punching) closes its socket
when bind or connect raise OSError, but not when the dial is cancelled, which is how the losing
path of a punch race ends: the socket leaked (a ResourceWarning, and an fd per lost race). The
replacement below is the same dial, closing the socket on any exit but success.
"""

from __future__ import annotations

import socket
from typing import Any

import trio
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp import tcp as _tcp

_original = _tcp._open_tcp_stream_from


async def _open_tcp_stream_from(host: str, port: int, source: tuple[str, int]
                                ) -> trio.SocketStream:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    if (":" in source[0]) != (":" in host):
        return await _original(host, port, source)  # py-libp2p's own error for this case
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        _tcp._set_reuse_flags(sock)
        try:
            await sock.bind(source)
        except OSError:  # the platform will not share the port: py-libp2p's fallback
            sock.close()
            return await _original(host, port, source)
        try:
            await sock.connect((host, port))
        except OSError as exc:
            raise OpenConnectionError(
                f"Failed to connect {host}:{port} from {source[0]}:{source[1]}: {exc}") from exc
        return trio.SocketStream(sock)
    except BaseException:
        sock.close()
        raise


def install() -> None:
    """Use the leak-free dial for every TCP dial with a source port."""
    module: Any = _tcp
    module._open_tcp_stream_from = _open_tcp_stream_from


install()
