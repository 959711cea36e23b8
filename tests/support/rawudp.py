"""Send an IPv4 UDP datagram with a forged source (port 0, say), as an attacker on the path can.

Needs CAP_NET_RAW (root); loopback only in the suite. `raw_available()` says why not, like
`netlab.lab_available()`.
"""

from __future__ import annotations

import os
import socket
import struct


def raw_available() -> str | None:
    """None when raw IPv4 sockets can be opened here, else the reason."""
    if os.geteuid() != 0:
        return "forging UDP sources needs a raw socket (root)"
    return None


def send_forged_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
    """One UDP datagram from `src` (any address and port, 0 included) to `dst` (IPv4)."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload  # checksum 0: none
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP,
                         0, socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        sock.sendto(header + udp, (dst[0], 0))
