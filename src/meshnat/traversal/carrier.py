"""Where a traversal's probes travel: a UDP socket of its own, or the node's shared UDP port.

An own socket (the default for explicit traversals) gives the traversal NAT mappings of its
own; taking a pair closes it, and QUIC then binds that port afresh. The shared port (the node's
QUIC listen port, as the hole puncher uses it) reuses the mapping discovery confirmed; taking a
pair closes nothing, the node's own QUIC listener answers, and QUIC dials from that port.
"""

from __future__ import annotations

import errno
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
    """Fresh UDP sockets on one ephemeral port number, one per IP family the node listens on
    (a dual-stack node's IPv6 pairs need a socket of their own too), closed when the traversal
    stops."""

    shared = False

    def __init__(self, socks: dict[int, trio.socket.SocketType]) -> None:
        self._socks = socks
        self.local_port: int = next(iter(socks.values())).getsockname()[1]
        self.versions = frozenset(socks)
        """The IP versions it can send to: one socket each."""

    @classmethod
    async def open(cls, *ips: IPv4Address | IPv6Address) -> OwnSocket:
        """Sockets on `ips` (at most one per family), all on the port number the first got;
        a number taken in another family is tried afresh (up to 8 times)."""
        for attempt in range(8):
            socks: dict[int, trio.socket.SocketType] = {}
            port = 0
            try:
                for ip in ips:
                    sock = trio.socket.socket(
                        socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
                    socks[ip.version] = sock
                    if ip.version == 6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    await sock.bind((str(ip), port))
                    port = sock.getsockname()[1]
                return cls(socks)
            except OSError:
                for sock in socks.values():
                    sock.close()
                if len(socks) < 2 or attempt == 7:  # the first bind failed, or the last try
                    raise
        raise AssertionError("unreachable")

    async def send(self, data: bytes, dst: Endpoint) -> None:
        sock = self._socks.get(dst.ip.version)
        if sock is None:
            raise OSError(errno.EAFNOSUPPORT, f"no IPv{dst.ip.version} socket")
        await sock.sendto(data, dst.to_sockaddr())

    async def run(self, on_probe: ProbeHandler) -> None:
        """Hand every traversal probe arriving on the sockets to `on_probe`, until cancelled.
        A socket's error (closed under its reader by `close`) ends every reader and is
        raised as itself, as with one socket."""
        failed: list[OSError | trio.ClosedResourceError] = []

        async def receive(sock: trio.socket.SocketType, done: trio.CancelScope) -> None:
            try:
                async for probe, src in receive_messages(sock, Probe):
                    on_probe(probe, src)
            except (OSError, trio.ClosedResourceError) as exc:
                failed.append(exc)
                done.cancel()

        async with trio.open_nursery() as nursery:
            for sock in self._socks.values():
                nursery.start_soon(receive, sock, nursery.cancel_scope)
        if failed:
            raise failed[0]

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()


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
