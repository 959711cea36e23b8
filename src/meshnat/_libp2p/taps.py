"""Meshnat datagrams from the node's `DatagramTap`, queued for a trio task to read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

from meshnat._libp2p.udp import DatagramTap
from meshnat.endpoint import Endpoint

T = TypeVar("T")


def _ignore(item: object) -> None:
    """The default `on_full`: a dropped item needs no undoing."""


@contextmanager
def tapped(tap: DatagramTap, accept: Callable[[bytes, Endpoint], T | None], capacity: int, *,
           on_full: Callable[[T], None] = _ignore) -> Iterator[trio.MemoryReceiveChannel[T]]:
    """While inside, queue `accept(data, src)` for each meshnat datagram `tap` sees.

    `accept` returns None for a datagram that is not for this reader. Tap handlers run in
    QUIC's receive loop and must never block, so an item past `capacity` queued ones is
    dropped and handed to `on_full` (to count it or give back what `accept` took).
    """
    send, receive = trio.open_memory_channel[T](capacity)

    def on_datagram(data: bytes, src: Endpoint) -> None:
        item = accept(data, src)
        if item is None:
            return
        try:
            send.send_nowait(item)
        except trio.WouldBlock:
            on_full(item)

    unsubscribe = tap.subscribe(on_datagram)
    try:
        yield receive
    finally:
        unsubscribe()
