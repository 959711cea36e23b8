"""One UDP socket driving many QUIC connections: batched receive, demultiplexing, sending.

Each wake-up drains the socket while it is readable (up to `BATCH` datagrams, several per
call where the kernel coalesces them: `gro`), hands each connection its datagrams as one
batch, then sends once per touched connection (in GSO batches: `gso`); no polling.
Datagrams reach a connection by destination connection id (all ids it issued), or, for
short-header packets with an id not (yet) known, by source address. Datagrams a `tap` claims
(meshnat's own messages on the QUIC port) never reach QUIC. Dials and accepted connections
share the socket, so a dial leaves from the listen port (what hole punching needs).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from ipaddress import ip_address
from typing import Any

import trio
from libp2p.peer.id import ID
from qh3.quic.configuration import QuicConfiguration

from meshnat._libp2p.quic.connection import QuicConn
from meshnat._libp2p.quic.core import Libp2pQuicConnection
from meshnat._libp2p.quic.gro import DatagramReceiver
from meshnat._libp2p.quic.gso import DatagramSender
from meshnat._libp2p.quic.sockbuf import enlarge_buffers
from meshnat.limits import network_of

log = logging.getLogger(__name__)

BATCH = 256
"""Datagrams read per wake-up before the other tasks get a turn."""
MAX_HANDSHAKES = 64
"""Inbound connections in their handshake at once; more Initial packets are dropped."""
MAX_HANDSHAKES_PER_NETWORK = 8
"""Of those, from one source network (IPv4 /24, IPv6 /56): one host cannot take them all."""
MAX_BACKLOG = 4096
"""Datagrams waiting for the socket to be writable; more are dropped (QUIC resends)."""
_CID_LENGTH = 8
_MIN_INITIAL = 1200

Tap = Callable[[bytes, tuple[str, int]], bool]
"""Called with every datagram first; True means it was not QUIC and is taken care of."""
Accept = Callable[[QuicConn], None]


def handshake_admitted(handshaking: Iterable[tuple[str, int]], addr: tuple[str, int]) -> bool:
    """Whether an Initial from `addr` may start a handshake beside those from `handshaking`:
    fewer than `MAX_HANDSHAKES` in all and `MAX_HANDSHAKES_PER_NETWORK` from its network."""
    network = network_of(ip_address(addr[0]))
    total = same = 0
    for other in handshaking:
        total += 1
        same += network_of(ip_address(other[0])) == network
    return total < MAX_HANDSHAKES and same < MAX_HANDSHAKES_PER_NETWORK


class QuicEndpoint:
    """A bound UDP socket and the QUIC connections on it. Run `serve` in a nursery."""

    def __init__(self, sock: socket.socket, *, client: QuicConfiguration,
                 server: QuicConfiguration | None, read_timeout: float | None) -> None:
        sock.setblocking(False)
        self.buffers = enlarge_buffers(sock)
        """The (receive, send) buffer sizes the kernel reports for the socket."""
        self.sock = sock
        self._sender = DatagramSender(sock)
        self._receiver = DatagramReceiver(sock)
        self._client, self._server, self._read_timeout = client, server, read_timeout
        self.tap: Tap | None = None
        self.on_accept: Accept | None = None
        self._by_cid: dict[bytes, QuicConn] = {}
        self._by_addr: dict[tuple[str, int], QuicConn] = {}
        self._handshaking: set[QuicConn] = set()
        self._backlog: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._backlog_ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.dropped = 0

    @property
    def local_address(self) -> tuple[str, int]:
        address: tuple[str, int] = self.sock.getsockname()[:2]
        return address

    @property
    def connections(self) -> set[QuicConn]:
        return set(self._by_cid.values())

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Receive and send until cancelled or `close`d."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._send_backlog)
            task_status.started()
            try:
                await self._receive_loop()
            finally:
                self._close_all()
                self._close_socket()
                nursery.cancel_scope.cancel()

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(task)

    async def dial(self, remote: tuple[str, int], peer: ID | None, *, timeout: float) -> QuicConn:
        """A connection to `remote` whose certificate proves `peer` (any peer if None). A
        dial cancelled from outside (the losing attempt of a happy-eyeballs race) shuts its
        connection instead of leaving it to finish the handshake unowned."""
        quic = Libp2pQuicConnection(configuration=self._client)
        conn = QuicConn(self, quic, remote, expected_peer=peer, read_timeout=self._read_timeout)
        quic.connect(remote, now=trio.current_time())
        self.route(quic.host_cid, conn)
        self._by_addr[remote] = conn
        self.spawn(conn.run_timers)
        conn.flush()
        try:
            with trio.move_on_after(timeout) as scope:
                await _first_of(conn.handshake_done, conn.closed)
        except BaseException:
            conn.shut("dial cancelled")
            raise
        if conn.handshake_done.is_set() and not conn.closed.is_set():
            return conn
        if scope.cancelled_caught:
            conn.shut("handshake timed out")
            raise TimeoutError(f"quic handshake with {remote[0]}:{remote[1]} timed out")
        raise ConnectionRefusedError(f"quic handshake failed: {conn.failure}")

    def replay_first_flight(self, remote: tuple[str, int]) -> bool:
        """Resend the first flight of this endpoint's dial to `remote` if nothing came back
        yet (a punch: the far NAT may have dropped the first copy); False if there is none."""
        conn = self._by_addr.get(remote)
        return conn is not None and conn.is_initiator and conn.replay_first_flight()

    def silence_dial(self, remote: tuple[str, int]) -> None:
        """The unanswered dial to `remote` ends without a CONNECTION_CLOSE (`QuicConn.quiet`)."""
        conn = self._by_addr.get(remote)
        if conn is not None and conn.is_initiator and not conn.answered:
            conn.quiet = True

    async def close(self) -> None:
        """Close every connection, stop serving and close the socket."""
        self._close_all()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self._close_socket()
        await trio.lowlevel.checkpoint()

    def _close_socket(self) -> None:
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock.fileno())
            self.sock.close()

    # --- routing ------------------------------------------------------------------------

    def route(self, cid: bytes, conn: QuicConn) -> None:
        self._by_cid[cid] = conn

    def unroute(self, cid: bytes) -> None:
        self._by_cid.pop(cid, None)

    def forget(self, conn: QuicConn) -> None:
        for cid in [c for c, owner in self._by_cid.items() if owner is conn]:
            del self._by_cid[cid]
        if self._by_addr.get(conn.remote_address) is conn:
            del self._by_addr[conn.remote_address]
        self._handshaking.discard(conn)

    def _conn_for(self, data: bytes, addr: tuple[str, int]) -> QuicConn | None:
        if data[0] & 0x80:  # long header: version(4), dcid length, dcid
            if len(data) < 6:
                return None
            cid = data[6:6 + data[5]]
            conn = self._by_cid.get(cid)
            if conn is None and (data[0] & 0x30) == 0 and len(data) >= _MIN_INITIAL:
                conn = self._accept(cid, addr)
            return conn
        conn = self._by_cid.get(data[1:1 + _CID_LENGTH])
        return conn if conn is not None else self._by_addr.get(addr)

    def _accept(self, cid: bytes, addr: tuple[str, int]) -> QuicConn | None:
        if self._server is None or self.on_accept is None or not 8 <= len(cid) <= 20 or \
                not handshake_admitted((c.remote_address for c in self._handshaking), addr):
            return None
        quic = Libp2pQuicConnection(configuration=self._server,
                                    original_destination_connection_id=cid)
        conn = QuicConn(self, quic, addr, expected_peer=None, read_timeout=self._read_timeout)
        self.route(cid, conn)
        self.route(quic.host_cid, conn)
        self._by_addr.setdefault(addr, conn)
        self._handshaking.add(conn)
        self.spawn(conn.run_timers)
        self.spawn(lambda: self._hand_over(conn))
        return conn

    async def _hand_over(self, conn: QuicConn) -> None:
        await _first_of(conn.handshake_done, conn.closed)
        self._handshaking.discard(conn)
        if conn.handshake_done.is_set() and not conn.closed.is_set() and self.on_accept:
            self.on_accept(conn)

    # --- I/O ----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.sock.fileno())
            batches: dict[QuicConn, dict[tuple[str, int], list[bytes]]] = {}
            read = 0
            while read < BATCH:
                try:
                    received, source = self._receiver.receive()
                except BlockingIOError:
                    break
                except OSError as exc:  # ICMP errors surface here; the socket goes on
                    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                        return
                    read += 1
                    continue
                read += len(received) or 1
                for data in received:
                    if not data or (self.tap is not None and self.tap(data, source)):
                        continue
                    addr = source[:2]
                    conn = self._conn_for(data, addr)
                    if conn is None:
                        self.dropped += 1
                        continue
                    batches.setdefault(conn, {}).setdefault(addr, []).append(data)
            now = trio.current_time()
            for conn, by_addr in batches.items():
                for addr, datagrams in by_addr.items():
                    conn.receive(datagrams, addr, now)
            for conn in batches:
                if not conn.closed.is_set():
                    conn.flush()

    def send_datagrams(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Send now; what the socket cannot take yet waits (bounded) for it to be writable."""
        if self._backlog:
            self._queue(datagrams)
            return
        sent = self._sender.send(datagrams)  # GSO batches where the kernel takes them
        if sent < len(datagrams):
            self._queue(datagrams[sent:])

    def _queue(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        room = MAX_BACKLOG - len(self._backlog)
        self._backlog.extend(datagrams[:max(room, 0)])
        self.dropped += max(len(datagrams) - room, 0)
        self._backlog_ready.set()

    async def _send_backlog(self) -> None:
        while True:
            await self._backlog_ready.wait()
            self._backlog_ready = trio.Event()
            while self._backlog:
                await trio.lowlevel.wait_writable(self.sock.fileno())
                while self._backlog:
                    data, addr = self._backlog[0]
                    try:
                        self.sock.sendto(data, addr)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        log.debug("quic: sendto %s failed: %s", addr, exc)
                    self._backlog.popleft()

    def _close_all(self) -> None:
        for conn in self.connections | set(self._by_addr.values()):
            conn.shut("endpoint closed")


async def _first_of(*flags: trio.Event) -> None:
    """Return once any of `flags` is set."""
    async with trio.open_nursery() as nursery:
        for flag in flags:
            async def wait(flag: trio.Event = flag) -> None:
                await flag.wait()
                nursery.cancel_scope.cancel()
            nursery.start_soon(wait)
