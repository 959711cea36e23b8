"""Meshnat datagrams on plain UDP sockets (the node's shared QUIC port has `DatagramTap`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import TypeVar

import trio

from meshnat.endpoint import Endpoint, udp_source
from meshnat.errors import RemoteProtocolError
from meshnat.wire import MAX_DATAGRAM_SIZE, decode, unframe_datagram
from meshnat.wire.codec import Message

log = logging.getLogger(__name__)

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


async def receive_messages(sock: trio.socket.SocketType, kind: type[M], *,
                           dropped: Counter[str] | None = None
                           ) -> AsyncIterator[tuple[M, Endpoint]]:
    """Each `kind` message arriving on `sock`, with its source; anything else is dropped.

    Datagrams from an impossible source (`endpoint.udp_source`: port 0, an unspecified,
    multicast or broadcast address) are dropped before they are parsed; `dropped`, if given,
    counts `impossible-source` and `not-a-message` drops.
    """
    drops: Counter[str] = Counter() if dropped is None else dropped
    while True:
        data, addr = await sock.recvfrom(MAX_DATAGRAM_SIZE + 1)
        src = udp_source(addr)
        if src is None:
            drops["impossible-source"] += 1
            log.debug("udp: dropped a datagram from an impossible source %.60s", addr)
            continue
        message = parse_datagram(data, kind)
        if message is None:
            drops["not-a-message"] += 1
            continue
        yield message, src
