"""One libp2p QUIC handshake in memory, once per process, off the critical path.

The first handshake a process runs costs qh3 ~100 ms (~50 ms of CPU; later ones ~6 ms): its
first ClientHello and first server flight initialise state lazily. A node's first QUIC
connection is often a punched path, made while a peer waits on the relay, so the transport
runs one handshake between two in-memory connections (no socket, no packet sent) in a worker
thread as soon as the swarm starts it. A failure here changes nothing but the timing.
"""

from __future__ import annotations

import logging
import threading

from qh3.quic.configuration import QuicConfiguration

from meshnat._libp2p.quic.core import Libp2pQuicConnection

log = logging.getLogger(__name__)

_ROUNDS = 8
"""Flights exchanged at most (a libp2p TLS handshake takes three)."""

_done = threading.Event()
_lock = threading.Lock()


def warm_up(client: QuicConfiguration, server: QuicConfiguration) -> bool:
    """Run one handshake between a client and a server connection in memory, unless one ran
    in this process already; True if this call ran one that completed."""
    with _lock:
        if _done.is_set():
            return False
        _done.set()
        try:
            return _handshake(client, server)
        except Exception as exc:  # qh3 internals: only the timing depends on it
            log.debug("quic: warm-up handshake failed: %s", exc)
            return False


def _handshake(client_config: QuicConfiguration, server_config: QuicConfiguration) -> bool:
    client_addr, server_addr = ("192.0.2.1", 1), ("192.0.2.2", 1)  # TEST-NET-1: never sent to
    client = Libp2pQuicConnection(configuration=client_config)
    client.connect(server_addr, now=0.0)
    server = Libp2pQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id)
    for _ in range(_ROUNDS):
        out = [data for data, _ in client.datagrams_to_send(0.0)]
        if out:
            server.receive_many_datagrams(out, client_addr, 0.0)
        back = [data for data, _ in server.datagrams_to_send(0.0)]
        if back:
            client.receive_many_datagrams(back, server_addr, 0.0)
        if not out and not back:
            break
    return bool(client._handshake_complete and server._handshake_complete)
