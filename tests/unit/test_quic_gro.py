"""DatagramReceiver: coalesced reads yield exactly the datagrams the peer sent, in order."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

import pytest

from meshnat._libp2p.quic.gro import UDP_GRO, DatagramReceiver, segment_size
from meshnat._libp2p.quic.gso import MAX_SEGMENTS, DatagramSender


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.settimeout(5)  # blocking reads with a deadline: the datagrams are already sent
    sender.setblocking(False)
    yield sender, receiver
    sender.close()
    receiver.close()


def receive_all(receiver: DatagramReceiver, count: int, source: tuple[str, int]) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        datagrams, addr = receiver.receive()
        assert addr[:2] == source
        got.extend(datagrams)
    return got


def test_a_segmented_batch_reads_back_as_the_datagrams_sent(
        pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    to = receiver_sock.getsockname()
    # runs of one size ending in a shorter one, a size change, more than one batch
    sizes = [1200] * (MAX_SEGMENTS + 10) + [700, 1200, 1200, 300, 5, 1252, 1252]
    datagrams = [(bytes([i % 251]) * size, to) for i, size in enumerate(sizes)]
    sender = DatagramSender(sender_sock)
    receiver = DatagramReceiver(receiver_sock)
    assert sender.send(datagrams) == len(datagrams)
    got = receive_all(receiver, len(datagrams), sender_sock.getsockname())
    assert got == [d for d, _ in datagrams]
    if receiver.coalescing and sender.segmentation:  # Linux: the batches arrive whole
        assert receiver.calls <= sender.calls < len(datagrams)


def test_single_datagrams_read_one_per_call(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    to = receiver_sock.getsockname()
    sent = [bytes([i]) * (100 + i) for i in range(5)]
    for data in sent:
        sender_sock.sendto(data, to)
    receiver = DatagramReceiver(receiver_sock)
    assert receive_all(receiver, 5, sender_sock.getsockname()) == sent
    assert receiver.calls == 5


class Refusing:
    """A socket whose kernel has no UDP_GRO: setsockopt fails, plain reads work."""

    def __init__(self, inner: socket.socket) -> None:
        self.inner = inner

    def setsockopt(self, *args: object) -> None:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        return self.inner.recvfrom(size)

    def recvmsg(self, *args: object) -> object:
        raise AssertionError("recvmsg on a socket without UDP_GRO")


def test_a_kernel_that_refuses_gro_gets_one_datagram_per_call(
        pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    to = receiver_sock.getsockname()
    datagrams = [(bytes([i]) * 1200, to) for i in range(5)]
    assert DatagramSender(sender_sock).send(datagrams) == 5
    receiver = DatagramReceiver(Refusing(receiver_sock))  # type: ignore[arg-type]
    assert not receiver.coalescing
    assert receive_all(receiver, 5, sender_sock.getsockname()) == [d for d, _ in datagrams]
    assert receiver.calls == 5


def test_segment_size_reads_only_the_gro_control_message() -> None:
    assert segment_size([]) == 0
    size = struct.pack("=i", 1200)
    assert segment_size([(socket.SOL_UDP, UDP_GRO, size)]) == 1200
    assert segment_size([(socket.SOL_SOCKET, UDP_GRO, size)]) == 0
