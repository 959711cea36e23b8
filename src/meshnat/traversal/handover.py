"""Handing a taken pair to QUIC: the take on either side, the peer told (`Take`), a listener on
the pair's local port or one dial from it, the take deadline, and streams on the pair."""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable

import trio

from meshnat import _libp2p, exchange
from meshnat._libp2p import ID, INetConn, PeerInfo, TProtocol
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ConfigError,
    ListenerMissing,
    MeshNatError,
    PairExpired,
    PairTaken,
    PortInUse,
)
from meshnat.node import MeshNode
from meshnat.traversal.messages import Take, TakeAccept
from meshnat.traversal.pairs import PairState, PortPair
from meshnat.traversal.session import PairStream, Traversal, TraversalConfig
from meshnat.wire.codec import describe

log = logging.getLogger(__name__)


class Handover:
    """Taken pairs handed from their traversal to the QUIC transport."""

    def __init__(self, config: TraversalConfig, *, protocol: TProtocol,
                 mounted: Callable[[], tuple[MeshNode, trio.Nursery]],
                 expire: Callable[[Traversal], None]) -> None:
        """`protocol`: the one the peer is told on; `mounted`: the node and nursery, or
        NotMounted; `expire`: marks a traversal's stale and unused pairs expired."""
        self.config = config
        self._protocol, self._mounted, self._expire = protocol, mounted, expire

    async def take(self, traversal: Traversal, pair_id: str, *, initiate: bool,
                   deadline: float | None) -> PortPair:
        """This node takes `pair_id` (see `TraversalService.take`)."""
        if deadline is not None and not (math.isfinite(deadline) and 0 < deadline <= 600):
            raise ConfigError(f"deadline must be within (0, 600] seconds, got {describe(deadline)}")
        if traversal.dialer is not None:
            raise PairTaken(f"traversal {traversal.id} has a pair taken already")
        use_within = self.config.take_deadline if deadline is None else deadline
        pair = traversal.table.take(pair_id, trio.current_time(), use_within=use_within)
        traversal.dialer = initiate
        traversal.notify()
        traversal.stop()  # keepalives end here; an own socket frees its port
        self._watch_deadline(traversal, pair)
        log.info("traversal %s: took pair %s (%s -> %s), %s", traversal.id, pair.id,
                 pair.local_port, pair.remote, "dialling" if initiate else "listening")
        if traversal.shared and initiate:
            self._mounted()[1].start_soon(self._tell_peer_quietly, traversal, pair)
            return pair
        if not initiate:
            await self._listen(traversal, pair)
        try:
            await self._tell_peer(traversal, pair)
        except MeshNatError:
            traversal.table.expire(pair_id)
            await self.close_listener(traversal)
            raise
        return pair

    async def _tell_peer(self, traversal: Traversal, pair: PortPair) -> None:
        """Send `Take` for `pair`; raises PeerRefused when the peer does not accept."""
        node, _ = self._mounted()
        await exchange.request(node, PeerInfo(traversal.peer, []), self._protocol,
                               Take(traversal.txid, pair.remote, pair.local,
                                    dial=not traversal.dialer),
                               TakeAccept, timeout=self.config.stream_timeout)

    async def _tell_peer_quietly(self, traversal: Traversal, pair: PortPair) -> None:
        try:
            await self._tell_peer(traversal, pair)
        except MeshNatError as exc:  # its listener answers the dial all the same
            log.info("traversal %s: the peer did not take pair %s: %s", traversal.id, pair.id,
                     exc)

    async def accept(self, traversal: Traversal, request: Take) -> TakeAccept:
        """The peer took a pair of `traversal` (its own with this peer): take ours."""
        if traversal.dialer is not None:
            raise PairTaken("a pair of this traversal is taken already")
        pair = _their_pair(traversal, request)
        taken = traversal.table.take(pair.id, trio.current_time(),
                                     use_within=self.config.take_deadline, peer_confirmed=True)
        traversal.dialer = request.dial
        traversal.notify()
        traversal.stop()
        if not request.dial:
            await self._listen(traversal, taken)
        self._watch_deadline(traversal, taken)
        log.info("traversal %s: peer took pair %s, %s", traversal.id, taken.id,
                 "dialling" if request.dial else "listening")
        return TakeAccept(request.txid)

    async def dial_taken(self, traversal: Traversal, peer: ID) -> None:
        """Dial on the pair the peer took for this node to dial on; a failure is logged."""
        pair = next((p for p in traversal.table.pairs() if p.state is PairState.TAKEN), None)
        if pair is None:
            return
        try:
            await self._dial(traversal, pair)
        except MeshNatError as exc:
            log.info("traversal %s: dialling %s on pair %s failed: %s", traversal.id, peer,
                     pair.id, exc)

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

    async def _listen(self, traversal: Traversal, pair: PortPair) -> None:
        """Accept the peer's QUIC connection on the pair's local port: an ephemeral listener
        there (the node's own one on the shared port), until that connection closes or the
        pair's deadline passes unused."""
        node, nursery = self._mounted()
        port = pair.local_port
        if not traversal.shared:
            try:
                traversal.listener = await _libp2p.listen_quic(
                    node.host, node.listen_endpoint("udp").ip, port)
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
        self._mounted()[1].start_soon(self._close_listener_after, traversal, conn)

    async def _close_listener_after(self, traversal: Traversal, conn: INetConn) -> None:
        await _libp2p.wait_closed(conn)
        await self.close_listener(traversal)

    async def close_listener(self, traversal: Traversal) -> None:
        """Close the ephemeral listener on the taken pair's port, if there is one."""
        if traversal.listener is not None:
            node, _ = self._mounted()
            await _libp2p.close_listener(node.host, traversal.listener)
            traversal.listener = None

    def _watch_deadline(self, traversal: Traversal, pair: PortPair) -> None:
        """At the deadline, an unused pair expires and its listener goes."""

        async def watch() -> None:
            assert pair.deadline is not None
            await trio.sleep_until(pair.deadline)
            if traversal.connection is None:
                self._expire(traversal)
                await self.close_listener(traversal)

        self._mounted()[1].start_soon(watch)

    async def _dial(self, traversal: Traversal, pair: PortPair) -> None:
        """Dial the peer's QUIC listener from the pair's local port: one dial per pair,
        however many callers."""
        async with traversal.dialling:
            if traversal.connection is not None:
                return
            node, _ = self._mounted()
            source = Endpoint(node.listen_endpoint("udp").ip, pair.local_port)
            limit = self.config.stream_timeout
            try:
                with trio.fail_after(limit):
                    conn = await _libp2p.dial_quic_from(node.host, traversal.peer,
                                                        pair.remote, source)
            except (MeshNatError, trio.TooSlowError) as exc:
                raise ListenerMissing(
                    f"no QUIC listener answered at {pair.remote}: {exc}") from exc
            self._connected(traversal, conn)


def _their_pair(traversal: Traversal, request: Take) -> PortPair:
    """Our pair toward the taker's endpoint `mine` (alive, or at least heard from: the
    taker's own check proved the other direction); with no match, the only alive pair."""
    usable = [p for p in traversal.table.pairs() if p.state is PairState.ALIVE
              or (p.state is PairState.PROBING and p.last_seen is not None)]
    for pair in usable:
        if pair.remote == request.mine:
            return pair
    alive = [p for p in usable if p.state is PairState.ALIVE]
    if len(alive) == 1:
        return alive[0]
    raise PairExpired("no alive pair matches the one taken")
