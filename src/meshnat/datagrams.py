"""Meshnat datagrams on plain UDP sockets (the node's shared QUIC port has `DatagramTap`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import trio

from meshnat.endpoint import Endpoint
from meshnat.errors import RemoteProtocolError
from meshnat.wire import MAX_DATAGRAM_SIZE, decode, unframe_datagram
from meshnat.wire.codec import Message

M = TypeVar("M", bound=Message)


def parse_datagram(data: bytes, kind: type[M]) -> M | None:
    """The `kind` message a datagram carries, or None (not meshnat, or another message)."""
    payload = unframe_datagram(data)
    if payload is None:
        return None
    try:
        return decode(payload, kind)
    except RemoteProtocolError:
        return None


async def receive_messages(sock: trio.socket.SocketType, kind: type[M]
                           ) -> AsyncIterator[tuple[M, Endpoint]]:
    """Each `kind` message arriving on `sock`, with its source; anything else is dropped."""
    while True:
        data, addr = await sock.recvfrom(MAX_DATAGRAM_SIZE + 1)
        message = parse_datagram(data, kind)
        if message is not None:
            yield message, Endpoint.from_sockaddr(addr)
