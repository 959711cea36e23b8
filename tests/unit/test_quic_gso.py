"""DatagramSender: segmented sends carry exactly the datagrams one sendto each would."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from meshnat._libp2p.quic.gso import MAX_SEGMENTS, DatagramSender


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.settimeout(5)
    sender.setblocking(False)
    yield sender, receiver
    sender.close()
    receiver.close()


def receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65536) for _ in range(count)]


def test_every_datagram_arrives_as_sent_in_order(pair: tuple[socket.socket, socket.socket]
                                                 ) -> None:
    sender_sock, receiver = pair
    to = receiver.getsockname()
    # runs of one size, a shorter one ending each run, one size change, more than one batch
    sizes = [1200] * (MAX_SEGMENTS + 10) + [700, 1200, 1200, 300, 5, 1252, 1252]
    datagrams = [(bytes([i % 251]) * size, to) for i, size in enumerate(sizes)]
    sender = DatagramSender(sender_sock)
    assert sender.send(datagrams) == len(datagrams)
    assert receive(receiver, len(datagrams)) == [d for d, _ in datagrams]
    if sender.segmentation:  # Linux with UDP_SEGMENT: far fewer calls than datagrams
        assert sender.calls <= 6


def test_datagrams_to_two_addresses_are_not_mixed(pair: tuple[socket.socket, socket.socket]
                                                  ) -> None:
    sender_sock, first = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.bind(("127.0.0.1", 0))
        second.settimeout(5)
        a, b = first.getsockname(), second.getsockname()
        datagrams = [(b"a" * 1000, a), (b"a" * 1000, a), (b"b" * 1000, b), (b"a" * 1000, a)]
        assert DatagramSender(sender_sock).send(datagrams) == 4
        assert receive(first, 3) == [b"a" * 1000] * 3
        assert receive(second, 1) == [b"b" * 1000]


class Refusing:
    """A socket whose segmented sends fail as a kernel without UDP_SEGMENT's do."""

    def __init__(self, inner: socket.socket) -> None:
        self.inner = inner

    def sendmsg(self, *args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        return self.inner.sendto(data, addr)


def test_a_kernel_that_refuses_segmentation_gets_one_datagram_per_call(
        pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver = pair
    to = receiver.getsockname()
    datagrams = [(bytes([i]) * 1200, to) for i in range(5)]
    sender = DatagramSender(Refusing(sender_sock))  # type: ignore[arg-type]
    assert sender.send(datagrams) == 5
    assert not sender.segmentation
    assert receive(receiver, 5) == [d for d, _ in datagrams]
