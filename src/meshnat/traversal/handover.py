"""Handing a taken pair to QUIC: the peer told (`Take`), a listener on the pair's local port
or one dial from it, and streams on the pair. Which side takes, dials or listens, and when a
pair expires, is the session's (`traversal/core.py`); this is the I/O."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

from meshnat import _libp2p, exchange
from meshnat._libp2p import INetConn, TProtocol
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ListenerMissing,
    MeshNatError,
    PairExpired,
    PortInUse,
)
from meshnat.node import MeshNode
from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.messages import Take, TakeAccept
from meshnat.traversal.pairs import PairState, PortPair
from meshnat.traversal.session import EarlyConnection, PairStream, Traversal

log = logging.getLogger(__name__)


class Handover:
    """Taken pairs handed from their traversal to the QUIC transport."""

    def __init__(self, config: TraversalConfig, *, protocol: TProtocol,
                 mounted: Callable[[], tuple[MeshNode, trio.Nursery]]) -> None:
        """`protocol`: the one the peer is told on; `mounted`: the node and nursery, or
        NotMounted."""
        self.config = config
        self._protocol, self._mounted = protocol, mounted

    async def tell_peer(self, traversal: Traversal, pair: PortPair) -> None:
        """Send `Take` for `pair`; raises PeerRefused when the peer does not accept."""
        node, _ = self._mounted()
        await exchange.request(node, _libp2p.peer_by_id(traversal.peer), self._protocol,
                               Take(traversal.txid, pair.remote, pair.local,
                                    dial=not traversal.dialer),
                               TakeAccept, timeout=self.config.stream_timeout)

    def tell_peer_soon(self, traversal: Traversal, pair: PortPair) -> None:
        """`tell_peer` in the background: its own listener answers the dial all the same."""
        self._soon(traversal, f"telling the peer of pair {pair.id}",
                   lambda: self.tell_peer(traversal, pair))

    def dial_soon(self, traversal: Traversal, pair: PortPair) -> None:
        """Dial on the pair the peer took for this node to dial on; a failure is logged."""
        self._soon(traversal, f"dialling on pair {pair.id}", lambda: self._dial(traversal, pair))

    def _soon(self, traversal: Traversal, doing: str,
              call: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await call()
            except MeshNatError as exc:
                log.info("traversal %s: %s failed: %s", traversal.id, doing, exc)

        self._mounted()[1].start_soon(run)

    def dial_early(self, traversal: Traversal, remote: Endpoint) -> None:
        """Dial `remote` from the traversal's port before any pair is taken (its Initial goes
        now, `traversal/early.py`); `_dial` on the target's pair waits for it."""
        node, nursery = self._mounted()
        early = traversal.early = EarlyConnection(remote)
        source = Endpoint(node.listen_endpoint("udp", remote.ip.version).ip,
                          traversal.table.local_port)
        limit = self.config.stream_timeout

        async def run() -> None:
            try:
                with early.scope, _libp2p.map_peer_errors("early QUIC dial", limit), \
                        trio.fail_after(limit):
                    early.connection = await _libp2p.dial_quic_from(node.host, traversal.peer,
                                                                    remote, source)
            except MeshNatError as exc:
                log.debug("traversal %s: early dial to %s failed: %s", traversal.id, remote,
                          exc)
            finally:
                early.done.set()

        nursery.start_soon(run)

    def replay_first_flight(self, remote: Endpoint) -> None:
        """The early dial's first flight to `remote` once more (unless it was answered)."""
        node, _ = self._mounted()
        if not node.udp.replay_first_flight(remote):
            log.debug("traversal: no first flight to %s to replay", remote)

    def abandon_early(self, traversal: Traversal, remote: Endpoint) -> None:
        """Drop the early dial to `remote`, without a CONNECTION_CLOSE; one that connected
        already stays (an authenticated direct connection; the node keeps or prunes it)."""
        early = traversal.early
        if early is None or early.remote != remote or early.done.is_set():
            return
        self._mounted()[0].udp.silence_dial(remote)
        early.scope.cancel()

    async def connect(self, traversal: Traversal, pair: PortPair) -> INetConn:
        """The QUIC connection on taken `pair` (see `TraversalService.connect`)."""
        if pair.state is not PairState.TAKEN:
            raise PairExpired(f"pair {pair.id} is {pair.state.value}, not taken")
        assert pair.deadline is not None
        if traversal.dialer:
            await self._dial(traversal, pair)
        if traversal.connection is not None:
            return traversal.connection
        with trio.move_on_at(pair.deadline):
            await traversal.connected.wait()
        if traversal.connection is None:
            raise PairExpired(f"pair {pair.id}: the peer did not dial before the deadline")
        return traversal.connection

    async def open_stream(self, conn: INetConn, pair: PortPair,
                          protocol: TProtocol) -> PairStream:
        """A stream speaking `protocol` over `conn`, the QUIC connection on taken `pair`."""
        node, _ = self._mounted()
        limit = self.config.stream_timeout
        with _libp2p.map_peer_errors(f"open {protocol}", limit), trio.fail_after(limit):
            stream = await _libp2p.open_stream_on(node.host, conn, protocol, limit)
        return PairStream(pair, stream, conn, pair.local_port, pair.remote)

    async def listen(self, traversal: Traversal, pair: PortPair) -> None:
        """Accept the peer's QUIC connection on the pair's local port: an ephemeral listener
        there (the node's own one on the shared port), until that connection closes or the
        pair's deadline passes unused."""
        node, nursery = self._mounted()
        port = pair.local_port
        if not traversal.shared:
            try:
                traversal.listener = await _libp2p.listen_quic(  # the pair's family
                    node.host, node.listen_endpoint("udp", pair.remote.ip.version).ip, port)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"port {port} is held by another socket") from exc
                raise

        async def wait() -> None:
            arrived: list[INetConn] = []
            got = trio.Event()

            def on_connected(conn: INetConn) -> None:
                if conn.muxed_conn.peer_id == traversal.peer and \
                        _libp2p.local_port(conn) == port:
                    arrived.append(conn)
                    got.set()

            assert pair.deadline is not None
            with _libp2p.watch_connections(node.host, on_connected), \
                    trio.move_on_at(pair.deadline):
                await got.wait()
            if arrived:
                self._connected(traversal, arrived[0])

        nursery.start_soon(wait)

    def _connected(self, traversal: Traversal, conn: INetConn) -> None:
        traversal.connection = conn
        traversal.connected.set()
        traversal.session.connected(trio.current_time())
        traversal.wake.set()  # the deadline no longer applies
        self._mounted()[1].start_soon(self._close_listener_after, traversal, conn)

    async def _close_listener_after(self, traversal: Traversal, conn: INetConn) -> None:
        await _libp2p.wait_closed(conn)
        traversal.session.disconnected(trio.current_time())
        await self.close_listener(traversal)

    async def close_listener(self, traversal: Traversal) -> None:
        """Close the ephemeral listener on the taken pair's port, if there is one."""
        if traversal.listener is not None:
            node, _ = self._mounted()
            await _libp2p.close_listener(node.host, traversal.listener)
            traversal.listener = None

    async def _dial(self, traversal: Traversal, pair: PortPair) -> None:
        """Dial the peer's QUIC listener from the pair's local port: one dial per pair,
        however many callers."""
        async with traversal.dialling:
            if traversal.connection is not None:
                return
            early = traversal.early
            if early is not None and traversal.session.early_connection(pair.remote):
                await early.done.wait()  # its own deadline ends it
                if early.connection is not None and not early.connection.is_closed:
                    self._connected(traversal, early.connection)
                    return
                log.debug("traversal %s: the early dial failed, dialling again", traversal.id)
            node, _ = self._mounted()
            source = Endpoint(node.listen_endpoint("udp", pair.remote.ip.version).ip,
                              pair.local_port)
            limit = self.config.stream_timeout
            try:
                with _libp2p.map_peer_errors("QUIC dial on a pair", limit), \
                        trio.fail_after(limit):
                    conn = await _libp2p.dial_quic_from(node.host, traversal.peer,
                                                        pair.remote, source)
            except MeshNatError as exc:
                raise ListenerMissing(
                    f"no QUIC listener answered at {pair.remote}: {exc}") from exc
            self._connected(traversal, conn)

