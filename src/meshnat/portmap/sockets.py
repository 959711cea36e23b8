"""The PortMapper's sockets towards the gateway: the local address it sends from, the
224.0.0.1:5350 socket where gateways announce a restart, and a send that never raises."""

from __future__ import annotations

import logging
import socket
from ipaddress import IPv4Address, ip_address

import trio

from meshnat.endpoint import Endpoint
from meshnat.errors import PeerUnavailable
from meshnat.portmap import natpmp

log = logging.getLogger(__name__)


def local_ip_towards(gateway: IPv4Address) -> IPv4Address:
    """The address this host sends from towards `gateway` (what PCP puts in its header)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(gateway), natpmp.SERVER_PORT))
        except OSError as exc:
            raise PeerUnavailable(f"portmap: no route to the gateway: {exc}") from None
        ip = ip_address(probe.getsockname()[0])
    assert isinstance(ip, IPv4Address)
    return ip


async def announcement_socket(gateway: Endpoint) -> trio.socket.SocketType | None:
    """A socket on 224.0.0.1:5350, where gateways announce a restart; None if it cannot be
    bound (mappings are then checked for a reboot only when renewed)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind((natpmp.ANNOUNCE_GROUP, natpmp.ANNOUNCE_PORT))
        local = local_ip_towards(IPv4Address(str(gateway.ip)))
        membership = socket.inet_aton(natpmp.ANNOUNCE_GROUP) + local.packed
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except (OSError, PeerUnavailable) as exc:
        log.debug("portmap: no announcements: %s", exc)
        sock.close()
        return None
    return sock


async def send_to_gateway(sock: trio.socket.SocketType, datagram: bytes, to: Endpoint) -> None:
    """Send `datagram` to the gateway; a failure is logged (the session retransmits)."""
    try:
        await sock.sendto(datagram, to.to_sockaddr())
    except OSError as exc:
        log.debug("portmap: send to %s failed: %s", to, exc)
