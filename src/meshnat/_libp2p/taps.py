"""Meshnat datagrams from the node's `DatagramTap`, queued for a trio task to read, or the
first one answering a request."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import trio

from meshnat._libp2p.udp import DatagramTap
from meshnat.datagrams import parse_datagram
from meshnat.endpoint import Endpoint
from meshnat.wire.codec import Message

T = TypeVar("T")
M = TypeVar("M", bound=Message)


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


class Arrival(Generic[M]):
    """The first datagram a `first_datagram` watch caught: unset until one arrives."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.message: M | None = None
        self.at = 0.0
        """`trio.current_time()` when it arrived."""

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def _catch(self, message: M) -> None:
        self.message, self.at = message, trio.current_time()
        self._event.set()


@contextmanager
def first_datagram(tap: DatagramTap, kind: type[M], txid: bytes, *,
                   src: Endpoint | None = None) -> Iterator[Arrival[M]]:
    """While inside, catch the first `kind` message carrying `txid` that `tap` sees (from
    `src` only, if given); anything else is left to the tap's other readers."""
    arrival: Arrival[M] = Arrival()

    def on_datagram(data: bytes, source: Endpoint) -> None:
        if arrival.is_set() or (src is not None and source != src):
            return
        message = parse_datagram(data, kind)
        if message is not None and hmac.compare_digest(message.txid, txid):
            arrival._catch(message)

    unsubscribe = tap.subscribe(on_datagram)
    try:
        yield arrival
    finally:
        unsubscribe()
