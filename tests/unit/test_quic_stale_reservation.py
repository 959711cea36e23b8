"""qh3 2.1's stale stream reservation, sans-IO: two connections exchange datagrams in memory.

A PTO copies a stream's in-flight data for the probes; the copy stays reserved behind a full
congestion window; the original is then acknowledged in the same batch that carries the
peer's FIN, so the stream is done both ways and qh3 removes it when its event is taken. qh3's
own `receive_many_datagrams` takes the events first and its next `poll_transmit` raised
ValueError("reserved stream is missing"); `Libp2pQuicConnection` packs before taking them.
The clock is a number the test advances; nothing depends on wall time.
"""

from __future__ import annotations

from libp2p.crypto.ed25519 import create_new_key_pair
from qh3.quic import events

from meshnat._libp2p.quic.core import Libp2pQuicConnection
from meshnat._libp2p.quic.tls import configuration, libp2p_certificate

LIMITS = {"max_stream_data": 1 << 16, "max_data": 1 << 18, "idle_timeout": 30.0}
CLIENT_ADDR, SERVER_ADDR = ("127.0.0.1", 1), ("127.0.0.1", 2)
# the client's three streams, in the order it opens them
A, B, C = 0, 4, 8


class Pair:
    """A client and a server connection; datagrams go across in one batch per call, as the
    endpoint hands them over."""

    def __init__(self) -> None:
        self.now = 0.0
        self.client = Libp2pQuicConnection(configuration=configuration(
            libp2p_certificate(create_new_key_pair().private_key), is_client=True, **LIMITS))
        self.client.connect(SERVER_ADDR, now=self.now)
        server_certificate = libp2p_certificate(create_new_key_pair().private_key)
        first = self.client.datagrams_to_send(self.now)
        self.server = Libp2pQuicConnection(
            configuration=configuration(server_certificate, is_client=False, **LIMITS),
            original_destination_connection_id=first[0][0][6:6 + first[0][0][5]])
        for data, _ in first:
            self.server.receive_datagram(data, CLIENT_ADDR, self.now)
        for _ in range(8):
            self.to_client()
            self.to_server()
        assert self.client._handshake_complete and self.server._handshake_complete
        self.received: dict[tuple[str, int], bytearray] = {}
        self.ended: set[tuple[str, int]] = set()
        self.take_events()

    def to_server(self) -> None:
        self._carry(self.client, self.server, CLIENT_ADDR)

    def to_client(self) -> None:
        self._carry(self.server, self.client, SERVER_ADDR)

    def _carry(self, sender: Libp2pQuicConnection, receiver: Libp2pQuicConnection,
               source: tuple[str, int]) -> None:
        datagrams = [data for data, _ in sender.datagrams_to_send(self.now)]
        if not datagrams:
            return
        if receiver._handshake_complete:
            receiver.receive_many_datagrams(datagrams, source, self.now)
        else:
            for data in datagrams:
                receiver.receive_datagram(data, source, self.now)
        self.take_events()

    def take_events(self) -> None:
        for side, conn in (("client", self.client), ("server", self.server)):
            while (event := conn.next_event()) is not None:
                if isinstance(event, events.StreamDataReceived):
                    self.received.setdefault((side, event.stream_id), bytearray()).extend(
                        event.data)
                    if event.end_stream:
                        self.ended.add((side, event.stream_id))
                assert not isinstance(event, events.ConnectionTerminated), event

    def timers(self) -> None:
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
        self.take_events()


def test_a_stream_done_while_its_probe_copy_waits_for_the_window_does_not_fail_qh3() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    for stream_id, size in ((A, 2458), (B, 726), (C, 60)):
        assert client._open_stream() == stream_id
        client.send_stream_data(stream_id, b"o" * size)
    pair.now += 0.01
    pair.to_server()
    answer = {A: bytes(range(256)) * 390, C: bytes(range(255, -1, -1)) * 390}
    server.send_stream_data(C, answer[C], end_stream=True)
    server.send_stream_data(A, answer[A], end_stream=True)
    client.send_stream_data(B, b"q" * 1000, end_stream=True)
    server.send_stream_data(B, b"", end_stream=True)
    pair.to_client()  # the server's first window; the client does not answer yet
    pair.now += 0.3
    pair.timers()  # the server's PTO: probe copies of its oldest packets, B's FIN among them
    assert server._core.pto_count == 1
    pair.now += 0.01
    pair.to_client()  # the two probes; the copies that did not fit stay reserved
    pair.to_server()  # every packet acknowledged, and B's data and FIN: B is done both ways

    pair.now += 0.001
    pair.to_client()  # qh3's own receive_many_datagrams: ValueError here

    for _ in range(2000):
        if {("client", A), ("client", C), ("server", B)} <= pair.ended:
            break
        pair.now += 0.002
        pair.timers()
        pair.to_client()
        pair.to_server()
    assert bytes(pair.received["client", A]) == answer[A]
    assert bytes(pair.received["client", C]) == answer[C]
    assert bytes(pair.received["server", B]) == b"o" * 726 + b"q" * 1000
    assert ("client", B) in pair.ended and ("server", B) in pair.ended
