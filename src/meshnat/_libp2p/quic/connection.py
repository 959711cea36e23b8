"""One QUIC connection as py-libp2p's IMuxedConn: qh3's events to streams, timers, keepalive.

The endpoint (`endpoint.QuicEndpoint`) feeds it datagrams in batches and sends what `flush`
returns; everything here runs without blocking except the timer task and the waits of
`open_stream`/`accept_stream`/`handshake`.

Whatever qh3 raises stays here: a stream the core refuses (finished, reset) is a
MuxedStreamReset of that stream; any other failure of the core (qh3 2.1 has at least one
internal error, "reserved stream is missing", see `core.py`) ends this connection only, with
a CONNECTION_CLOSE sent if the core still can, every stream failing with a MuxedStreamReset
that says why, and a WARNING logged with the qh3 call and its exception.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import multiaddr
import trio
from libp2p.abc import IMuxedConn
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamReset
from qh3.quic import events
from qh3.quic.connection import QuicConnectionError

from meshnat._libp2p.quic.core import Libp2pQuicConnection
from meshnat._libp2p.quic.stream import RECEIVE_LIMIT, QuicStream

if TYPE_CHECKING:
    from meshnat._libp2p.quic.endpoint import QuicEndpoint

log = logging.getLogger(__name__)

_INTERNAL_ERROR = 0x1
"""The application error code a connection is closed with when qh3 failed."""
KEEPALIVE = 15.0
"""Seconds of silence after which a PING keeps the path (and NAT mappings) alive."""
MAX_INBOUND_STREAMS = 256
"""Streams the peer opened that wait for `accept_stream`; more are reset."""
_NO_STREAM = 0
_T = TypeVar("_T")


class Qh3Failed(MuxedConnUnavailable):
    """A call into qh3 raised: the connection is closed (`QuicConn.failure` says why)."""


class QuicConn(IMuxedConn):
    """A libp2p QUIC connection over `endpoint`'s socket, to `remote`."""

    def __init__(self, endpoint: QuicEndpoint, quic: Libp2pQuicConnection,
                 remote: tuple[str, int], *, expected_peer: ID | None,
                 read_timeout: float | None) -> None:
        self.endpoint, self.quic, self.remote_address = endpoint, quic, remote
        self._initiator = quic.configuration.is_client
        self._expected_peer = expected_peer
        self.peer_id = expected_peer or ID(b"")
        self.read_timeout = read_timeout
        self.event_started = trio.Event()
        self.handshake_done = trio.Event()
        self.closed = trio.Event()
        self.failure: str | None = None
        self.on_close: Callable[[], Awaitable[None]] | None = None
        self._streams: dict[int, QuicStream] = {}
        self._incoming: deque[QuicStream] = deque()
        self._incoming_ready = trio.Event()
        self._send_progress = trio.Event()
        self._timer_moved = trio.Event()
        self._sleeping_until = float("inf")
        self._last_activity = trio.current_time()
        self.paused = False
        """True while a stream holds more than RECEIVE_LIMIT unread: the core keeps the data
        that arrives meanwhile and grants no credit for it (`Libp2pQuicConnection.holding`);
        acknowledgments go on being processed, so this side's writers are not stalled."""
        self.intake_paused = trio.Event()
        """Set while `paused` (a fresh event once intake resumes)."""
        self._full: set[int] = set()
        self.first_flight: list[tuple[bytes, tuple[str, int]]] | None = None
        """A dial's first datagrams, for `replay_first_flight`."""
        self.answered = False
        """Something arrived from the peer."""
        self.quiet = False
        """Close without a CONNECTION_CLOSE (an abandoned dial to an unproven address)."""

    # --- IMuxedConn ---------------------------------------------------------------------

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def is_established(self) -> bool:
        return self.handshake_done.is_set() and not self.closed.is_set()

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    async def start(self) -> None:
        """Called by the swarm; the endpoint drives the connection, so only marks it started."""
        self.event_started.set()
        await self.closed.wait()

    async def close(self) -> None:
        """Close the connection (CONNECTION_CLOSE to the peer, every stream fails)."""
        self.shut("closed here")
        await trio.lowlevel.checkpoint()

    async def open_stream(self) -> QuicStream:
        """A new stream; waits while the peer's MAX_STREAMS allows no more."""
        while not self._may_open_stream():
            if self.closed.is_set():
                raise MuxedConnUnavailable("connection closed")
            await self.wait_send_progress()
        if self.closed.is_set():
            raise MuxedConnUnavailable("connection closed")
        stream = QuicStream(self, self._qh3("open_stream", self.quic._open_stream))
        self._streams[stream.stream_id] = stream
        await trio.lowlevel.checkpoint()
        return stream

    def _may_open_stream(self) -> bool:
        """qh3 advances its stream ids before checking the peer's limit, so check first."""
        opened = self.quic.get_next_available_stream_id() // 4
        return self.closed.is_set() or opened < self.quic.max_concurrent_bidi_streams

    async def accept_stream(self) -> QuicStream:
        while not self._incoming:
            if self.closed.is_set():
                raise MuxedConnUnavailable("connection closed")
            await self._incoming_ready.wait()
            self._incoming_ready = trio.Event()
        return self._incoming.popleft()

    def get_transport_addresses(self) -> list[multiaddr.Multiaddr]:
        ip, port = self.remote_address[:2]
        family = "ip6" if ":" in ip else "ip4"
        return [multiaddr.Multiaddr(f"/{family}/{ip}/udp/{port}/quic-v1")]

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.DIRECT

    def get_remote_address(self) -> tuple[str, int]:
        return self.remote_address

    # --- streams' calls -----------------------------------------------------------------

    def send(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        """Queue `data` (and FIN) on the stream and send; MuxedStreamReset if the core refuses."""
        try:
            self._qh3("send_stream_data",
                      lambda: self.quic.send_stream_data(stream_id, data, end_stream=end_stream),
                      refusals=(QuicConnectionError, ValueError))
        except (QuicConnectionError, ValueError) as exc:  # finished, or reset on STOP_SENDING
            raise MuxedStreamReset(f"stream {stream_id}: {_reason(exc)}") from exc
        except Qh3Failed as exc:
            raise MuxedStreamReset(f"connection of stream {stream_id} closed: "
                                   f"{self.failure}") from exc
        self.flush()

    def send_backlog(self, stream_id: int) -> int:
        if self.closed.is_set():
            return 0
        try:
            return self._qh3("get_send_buffer_size",
                             lambda: self.quic.get_send_buffer_size(stream_id))
        except Qh3Failed:
            return 0

    async def wait_send_progress(self) -> None:
        await self._send_progress.wait()

    def wake_writers(self) -> None:
        self._send_progress.set()
        self._send_progress = trio.Event()

    def reset(self, stream_id: int, code: int, *, stop: bool) -> None:
        """RESET_STREAM, and STOP_SENDING if `stop` (the receive side is not finished yet)."""
        with contextlib.suppress(QuicConnectionError, ValueError):  # the core finished it
            self.quic.reset_stream(stream_id, code)
        if stop:
            self.stop_sending(stream_id, code)
        else:
            self.flush()

    def stop_sending(self, stream_id: int, code: int) -> None:
        with contextlib.suppress(QuicConnectionError, ValueError):  # the core finished it
            self.quic.stop_stream(stream_id, code)
        self.flush()

    def stream_drained(self, stream: QuicStream) -> None:
        """A reader took data: resume taking datagrams once no stream is over its limit."""
        if stream.unread <= RECEIVE_LIMIT // 2 and stream.stream_id in self._full:
            self._full.discard(stream.stream_id)
            if self.paused and not self._full:
                self.paused = False
                self.intake_paused = trio.Event()
                self._qh3("release", self.quic.release)
                self._handle_events()
                self.wake_writers()
                self.flush()  # the credit for what was taken

    def forget_if_done(self, stream: QuicStream) -> None:
        if stream.done:
            self._streams.pop(stream.stream_id, None)

    # --- the endpoint's calls -----------------------------------------------------------

    def receive(self, datagrams: list[bytes], addr: tuple[str, int], now: float) -> None:
        """Feed a batch of datagrams from `addr`, then handle qh3's events (no sending)."""
        self._last_activity = now
        self.answered = True
        try:
            self._qh3("receive_many_datagrams",
                      lambda: self.quic.receive_many_datagrams(datagrams, addr, now))
        except Qh3Failed:
            return
        self._handle_events()
        self.wake_writers()

    def flush(self) -> None:
        """Send what qh3 has to send now; re-arm the timer task if its deadline moved earlier.

        A qh3 failure ends this connection only (qh3 2.1 raises here, for one, when serving
        aioquic's single-datagram ClientHello: "packet builder capacity exhausted").
        """
        if self.closed.is_set():
            return
        now = trio.current_time()
        try:
            datagrams = self._qh3("datagrams_to_send", lambda: self.quic.datagrams_to_send(now))
        except Qh3Failed:
            return
        if datagrams:
            if self._initiator and self.first_flight is None:
                self.first_flight = list(datagrams)
            self.endpoint.send_datagrams(datagrams)
        timer = self.quic.get_timer()
        if timer is not None and timer < self._sleeping_until:
            self._timer_moved.set()

    async def run_timers(self) -> None:
        """qh3's timers and the keepalive, until the connection is closed."""
        while not self.closed.is_set():
            timer = self.quic.get_timer()
            deadline = min(timer if timer is not None else float("inf"),
                           self._last_activity + KEEPALIVE)
            self._sleeping_until = deadline
            self._timer_moved = trio.Event()
            with trio.move_on_at(deadline):
                await self._timer_moved.wait()
            self._sleeping_until = float("inf")
            now = trio.current_time()
            try:
                if timer is not None and now >= timer:
                    self._qh3("handle_timer", functools.partial(self.quic.handle_timer, now))
                    self._handle_events()
                elif now >= self._last_activity + KEEPALIVE and self.handshake_done.is_set():
                    self._qh3("send_ping", lambda: self.quic.send_ping(0))
                    self._last_activity = now
            except Qh3Failed:
                return
            if not self.closed.is_set():
                self.flush()

    def _handle_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self._on_stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.StreamReset):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.on_reset()
                    self.forget_if_done(stream)
            elif isinstance(event, events.StopSendingReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.on_stop_sending()
                    self.wake_writers()
            elif isinstance(event, events.HandshakeCompleted):
                self._on_handshake()
            elif isinstance(event, events.ConnectionIdIssued):
                self.endpoint.route(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                self.endpoint.unroute(event.connection_id)
            elif isinstance(event, events.ConnectionTerminated):
                self._terminate(f"terminated by the peer or qh3 (code {event.error_code})")
                return

    def _on_handshake(self) -> None:
        proven = self.quic.proven_peer
        if proven is None:  # Libp2pTlsContext refuses unproven peers; keep the rule local too
            self._fail("the peer proved no libp2p identity")
        elif self._expected_peer is not None and proven != self._expected_peer:
            self._fail("the peer is not the one dialled")
        else:
            self.peer_id = proven
            self.handshake_done.set()

    def replay_first_flight(self) -> bool:
        """Send a dial's first datagrams once more, as they were, if nothing came back yet
        (the server drops a duplicate); False otherwise."""
        if self.answered or self.closed.is_set() or not self.first_flight:
            return False
        self.endpoint.send_datagrams(self.first_flight)
        return True

    def shut(self, reason: str, code: int = 0) -> None:
        """Send CONNECTION_CLOSE (best effort, not when `quiet`) and end the connection here."""
        if not self.closed.is_set():
            if not self.quiet:
                self._close_core(code)
            self._terminate(reason)

    def _close_core(self, code: int) -> None:
        """CONNECTION_CLOSE, best effort: after a failure the core may be in any state."""
        try:
            self.quic.close(error_code=code, reason_phrase="closed")
            self.endpoint.send_datagrams(self.quic.datagrams_to_send(trio.current_time()))
        except Exception as exc:
            log.debug("quic: no CONNECTION_CLOSE to %s: %r", self.remote_address, exc)

    def _fail(self, reason: str) -> None:
        self.shut(reason, code=0x100)

    def _qh3(self, operation: str, call: Callable[[], _T], *,
             refusals: tuple[type[Exception], ...] = ()) -> _T:
        """`call()` into qh3, which may raise anything: a failure ends this connection (only).

        Raises `Qh3Failed` once the connection is closed with a reset naming `operation` and
        the error; exceptions in `refusals` (a stream the core refuses) pass unchanged.
        """
        try:
            return call()
        except refusals:
            raise
        except Exception as exc:
            self._qh3_failed(operation, exc)
            raise Qh3Failed(f"connection closed: {self.failure}") from exc

    def _qh3_failed(self, operation: str, exc: Exception) -> None:
        """qh3 raised in `operation`: end this connection (only), say what happened."""
        if self.closed.is_set():
            return
        if isinstance(exc, QuicConnectionError):  # qh3's own way to fail a connection
            log.debug("quic: qh3 %s failed on the connection to %s: %s",
                      operation, self.remote_address, exc)
        else:
            log.warning("quic: qh3 %s raised %r on the connection to %s; closing it",
                        operation, exc, self.remote_address, exc_info=exc)
        self._close_core(_INTERNAL_ERROR)
        self._terminate(f"qh3 {operation} failed: {_reason(exc)}")

    def _on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_local(stream_id) or len(self._incoming) >= MAX_INBOUND_STREAMS:
                return  # a stream already forgotten, or too many waiting: drop
            stream = QuicStream(self, stream_id)
            self._streams[stream_id] = stream
            self._incoming.append(stream)
            self._incoming_ready.set()
        stream.on_data(data, end_stream)
        if stream.unread > RECEIVE_LIMIT:
            self._full.add(stream_id)
            self.paused = self.quic.holding = True
            self.intake_paused.set()

    def _is_local(self, stream_id: int) -> bool:
        return (stream_id & 1) == (0 if self._initiator else 1)

    def _terminate(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.failure = reason
        self.closed.set()
        self._timer_moved.set()
        self._incoming_ready.set()
        self.wake_writers()
        for stream in self._streams.values():
            stream.on_connection_closed()
        self.endpoint.forget(self)
        if self.on_close is not None:
            self.endpoint.spawn(self.on_close)
        log.debug("quic: connection to %s closed: %s", self.remote_address, reason)


def _reason(exc: Exception) -> str:
    return exc.reason_phrase if isinstance(exc, QuicConnectionError) else repr(exc)
