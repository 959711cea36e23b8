"""Reading the node's datagram tap: `tapped` (a channel) and `first_datagram` (one answer)."""

from __future__ import annotations

from typing import Any, cast

import trio

from meshnat._libp2p import DatagramTap, first_datagram, tapped
from meshnat.classify.messages import ProbeDatagram
from meshnat.endpoint import Endpoint
from meshnat.reflection.messages import ObserveRequest
from meshnat.wire import encode, frame_datagram

A, B = Endpoint.parse("192.0.2.1:4001"), Endpoint.parse("192.0.2.2:4001")
TXID, OTHER = bytes(range(16)), bytes(16)


class FakeTap:
    """What the readers use of a DatagramTap: `subscribe`."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def subscribe(self, handler: Any) -> Any:
        self.handlers.append(handler)
        return lambda: self.handlers.remove(handler)

    def deliver(self, data: bytes, src: Endpoint) -> None:
        for handler in list(self.handlers):
            handler(data, src)


def datagram(message: Any) -> bytes:
    return frame_datagram(encode(message))


async def test_first_datagram_keeps_the_first_message_with_the_txid_from_the_source() -> None:
    tap = FakeTap()
    with first_datagram(cast(DatagramTap, tap), ProbeDatagram, TXID, src=A) as arrival:
        tap.deliver(datagram(ProbeDatagram(TXID)), B)  # another source
        tap.deliver(datagram(ProbeDatagram(OTHER)), A)  # another request
        tap.deliver(datagram(ObserveRequest(TXID)), A)  # another kind of message
        tap.deliver(b"not meshnat", A)
        assert not arrival.is_set() and arrival.message is None
        first, before = ProbeDatagram(TXID), trio.current_time()
        tap.deliver(datagram(first), A)
        caught_at = arrival.at
        tap.deliver(datagram(ProbeDatagram(TXID)), A)
        assert arrival.is_set() and arrival.message == first
        assert before <= caught_at == arrival.at <= trio.current_time()
        await arrival.wait()
    assert tap.handlers == []


async def test_first_datagram_without_a_source_takes_any() -> None:
    tap = FakeTap()
    with first_datagram(cast(DatagramTap, tap), ProbeDatagram, TXID) as arrival:
        tap.deliver(datagram(ProbeDatagram(TXID)), B)
    assert arrival.message == ProbeDatagram(TXID)


async def test_tapped_queues_what_it_accepts_and_hands_the_overflow_to_on_full() -> None:
    tap, dropped = FakeTap(), list[Endpoint]()

    def accept(data: bytes, src: Endpoint) -> Endpoint | None:
        return src if data == b"mine" else None

    with tapped(cast(DatagramTap, tap), accept, 1, on_full=dropped.append) as receive:
        tap.deliver(b"not mine", A)
        tap.deliver(b"mine", A)
        tap.deliver(b"mine", B)
        assert receive.receive_nowait() == A
        assert dropped == [B]
    assert tap.handlers == []
