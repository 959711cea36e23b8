"""Where a traversal's probes travel: a UDP socket of its own, or the node's shared UDP port.

An own socket (the default for explicit traversals) gives the traversal NAT mappings of its
own; taking a pair closes it, and QUIC then binds that port afresh. The shared port (the node's
QUIC listen port, as the hole puncher uses it) reuses the mapping discovery confirmed; taking a
pair closes nothing, the node's own QUIC listener answers, and QUIC dials from that port.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import trio

from meshnat.datagrams import parse_datagram, receive_messages
from meshnat.endpoint import Endpoint
from meshnat.node import MeshNode
from meshnat.traversal.messages import Probe

ProbeHandler = Callable[[Probe, Endpoint], None]
"""Takes each probe as it arrives; must not block."""


class OwnSocket:
    """A fresh UDP socket on an ephemeral port, closed when the traversal stops."""

    shared = False

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self.local_port: int = sock.getsockname()[1]
        self.versions = frozenset({6 if sock.family == socket.AF_INET6 else 4})
        """The IP versions it can send to: its own family."""

    @classmethod
    async def open(cls, ip: IPv4Address | IPv6Address) -> OwnSocket:
        sock = trio.socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                                  socket.SOCK_DGRAM)
        try:
            await sock.bind((str(ip), 0))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes, dst: Endpoint) -> None:
        await self._sock.sendto(data, dst.to_sockaddr())

    async def run(self, on_probe: ProbeHandler) -> None:
        """Hand every traversal probe arriving on the socket to `on_probe`, until cancelled."""
        async for probe, src in receive_messages(self._sock, Probe):
            on_probe(probe, src)

    def close(self) -> None:
        self._sock.close()


class SharedPort:
    """The node's UDP listen port, shared with QUIC through the node's datagram tap."""

    shared = True

    def __init__(self, node: MeshNode) -> None:
        self._node = node
        self.local_port: int = node.listen_endpoint("udp").port
        self.versions = node.udp.versions
        """The IP versions it can send to: both on a dual-stack node (one port number)."""

    async def send(self, data: bytes, dst: Endpoint) -> None:
        await self._node.udp.sendto(data, dst)

    async def run(self, on_probe: ProbeHandler) -> None:
        """Hand every traversal probe the tap sees to `on_probe` (inside the tap's receive
        loop, which `on_probe` does not block), until cancelled."""

        def on_datagram(data: bytes, src: Endpoint) -> None:
            probe = parse_datagram(data, Probe)
            if probe is not None:
                on_probe(probe, src)

        unsubscribe = self._node.udp.subscribe(on_datagram)
        try:
            await trio.sleep_forever()
        finally:
            unsubscribe()

    def close(self) -> None:
        """Nothing to close: the port belongs to the node."""


Carrier = OwnSocket | SharedPort
