"""`TunnelService`: expose local TCP services to peers, and reach peers' services.

Exposing side: each inbound `/meshnat/tunnel/1.0.0` stream from a peer some service allows
takes a slot per peer, per source network and in total (`TunnelTable`),
names a service in one `OpenTunnel` frame, and is checked against that service's `allow` set
using the connection's authenticated peer id. The node then opens a fresh TCP connection to
the target, answers `TunnelOpened` and pipes bytes until both sides are done. Every refusal
is an `OpenRefused` frame; no failure reaches the node or leaves a socket open.

Forwarding side (`open`, `forward`): see client.py.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import trio

from meshnat import _libp2p
from meshnat._libp2p import INetStream, PeerInfo, StreamBytes, TaskStatus, TProtocol
from meshnat.connect import Connector
from meshnat.errors import MeshNatError, NotMounted, RemoteProtocolError
from meshnat.events import EventSink, TunnelClosed, ignore_events
from meshnat.limits import RELAYED, network_of
from meshnat.node import MeshNode
from meshnat.records import RecordAuthority
from meshnat.tunnel import client
from meshnat.tunnel.core import (
    AnyPeer,
    Exposed,
    Refusal,
    TunnelConfig,
    TunnelStatistics,
    TunnelTable,
)
from meshnat.tunnel.messages import OpenRefused, OpenTunnel, RefusalCode, TunnelOpened
from meshnat.tunnel.pipe import pipe
from meshnat.wire import TXID_SIZE, decode, encode

log = logging.getLogger(__name__)

TUNNEL_PROTOCOL = TProtocol("/meshnat/tunnel/1.0.0")


class TunnelService:
    """Maps service names to local TCP targets for allowed peers; opens tunnels to peers.

    `connector` (optional) picks the path for outbound tunnels (direct, punched, relayed);
    without it the peer's given addresses are dialled. Tunnels are reported with the path the
    node labels (`MeshNode.path_of`: `punched` while a mounted HolePuncher holds it).
    """

    protocol_id = TUNNEL_PROTOCOL

    def __init__(self, config: TunnelConfig | None = None, *, connector: Connector | None = None,
                 records: RecordAuthority | None = None,
                 events: EventSink = ignore_events) -> None:
        self.config = config or TunnelConfig()
        self._records = records
        self._table = TunnelTable(self.config)
        self._connector, self._events = connector, events
        self._node: MeshNode | None = None
        self._locks = client.PathLocks()

    # --- exposing ------------------------------------------------------------------------------

    def expose(self, name: str, target: tuple[str, int], *,
               allow: Collection[object] | AnyPeer) -> None:
        """Let the peers in `allow` (peer ids, or ANY_PEER) reach `target` as `name`.

        Replaces an earlier service of that name for new tunnels. Raises ConfigError for a bad
        name, target or an empty `allow`.
        """
        self._table.expose(Exposed.create(name, target, allow))
        self._advertise()
        log.info("tunnel: exposing %s -> %s:%d", name, target[0], target[1])

    def withdraw(self, name: str) -> None:
        """Stop accepting tunnels to `name` (open ones go on); LocalProtocolError if unknown."""
        self._table.withdraw(name)
        self._advertise()

    def _advertise(self) -> None:
        """Put the service names in the node's signed address record, if it has one."""
        if self._records is not None:
            self._records.set_services(self.services())

    def services(self) -> tuple[str, ...]:
        """The exposed service names, sorted (for the node's signed address record)."""
        return self._table.services()

    def statistics(self) -> TunnelStatistics:
        return self._table.statistics()

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        with _libp2p.handling(node.host, self.protocol_id, "tunnel", self._handle,
                              bounded=False):
            self._node = node
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._node = None

    async def _handle(self, stream: INetStream) -> None:
        peer = str(_libp2p.stream_peer(stream))
        observed = _libp2p.remote_endpoint(stream)
        network = RELAYED if observed is None else network_of(observed.ip)
        started = trio.current_time()
        refusal = self._table.acquire(peer, network)
        if refusal is not None:  # not allowed or over a limit: answer at once, read nothing
            await self._refuse(stream, bytes(TXID_SIZE), refusal, peer, "", started)
            return
        try:
            await self._serve_tunnel(stream, peer, started)
        finally:
            self._table.release(peer, network)

    async def _serve_tunnel(self, stream: INetStream, peer: str, started: float) -> None:
        limit = self.config.open_timeout
        try:
            with _libp2p.map_peer_errors("tunnel request", limit), trio.fail_after(limit):
                frame = await _libp2p.read_frame(stream)
            request = decode(frame, OpenTunnel)
        except RemoteProtocolError as exc:
            log.debug("tunnel: bad request from %s: %s", peer, exc)
            bad = self._table.refused(RefusalCode.BAD_REQUEST, str(exc))
            await self._refuse(stream, bytes(TXID_SIZE), bad, peer, "", started)
            return
        except MeshNatError as exc:
            log.debug("tunnel: no request from %s: %s", peer, exc)
            await _libp2p.reset_quietly(stream)
            self._report(peer, "", stream, 0, 0, started, "reset", str(exc))
            return
        decision = self._table.authorize(peer, request.service)
        if isinstance(decision, Refusal):
            await self._refuse(stream, request.txid, decision, peer, request.service, started)
            return
        target = await self._connect_target(decision)
        if isinstance(target, Refusal):
            await self._refuse(stream, request.txid, target, peer, request.service, started)
            return
        tunnel = StreamBytes(stream)
        outcome, sent, received, error = "reset", 0, 0, None
        try:
            with _libp2p.map_peer_errors("tunnel answer", limit), trio.fail_after(limit):
                await _libp2p.write_frame(stream, encode(TunnelOpened(request.txid)))
            result = await pipe(tunnel, target, chunk_size=self.config.chunk_size,
                                idle_timeout=self.config.idle_timeout)
            outcome, sent, received = result.outcome, result.b_to_a, result.a_to_b
            error = result.error
        except MeshNatError as exc:
            log.debug("tunnel: %s to %s broke while opening: %s", peer, request.service, exc)
            error = str(exc)
        finally:
            with trio.CancelScope(shield=True):
                await target.aclose()
                await (tunnel.aclose() if outcome == "closed" else tunnel.reset())
        self._report(peer, request.service, stream, sent, received, started, outcome, error)

    async def _connect_target(self, exposed: Exposed) -> trio.SocketStream | Refusal:
        """A fresh TCP connection to the service's target, or the refusal to send instead."""
        where = f"{exposed.host}:{exposed.port}"
        with trio.move_on_after(self.config.connect_timeout):
            try:
                return await trio.open_tcp_stream(exposed.host, exposed.port)
            except OSError as exc:
                log.info("tunnel: target %s of %s refused: %s", where, exposed.name, exc)
                return self._table.refused(RefusalCode.TARGET_REFUSED,
                                           f"service {exposed.name!r} is down (connection "
                                           f"refused)")
        log.info("tunnel: target %s of %s timed out", where, exposed.name)
        return self._table.refused(RefusalCode.TARGET_TIMEOUT,
                                   f"service {exposed.name!r} did not accept within "
                                   f"{self.config.connect_timeout:g}s")

    async def _refuse(self, stream: INetStream, txid: bytes, refusal: Refusal, peer: str,
                      service: str, started: float) -> None:
        log.debug("tunnel: refused %s (%s): %s", peer, service, refusal.reason)
        try:
            limit = self.config.open_timeout
            with _libp2p.map_peer_errors("tunnel refusal", limit), trio.fail_after(limit):
                await _libp2p.write_frame(stream, encode(OpenRefused(txid, refusal.code,
                                                                     refusal.reason)))
                await stream.close()
        except MeshNatError as exc:
            log.debug("tunnel: refusal to %s not delivered: %s", peer, exc)
            await _libp2p.reset_quietly(stream)
        self._report(peer, service, stream, 0, 0, started, refusal.code.label, refusal.reason)

    def _report(self, peer: str, service: str, stream: INetStream, sent: int, received: int,
                started: float, outcome: str, error: str | None = None) -> None:
        self._events(TunnelClosed("expose", peer, service, self._mounted().path_of(stream), sent,
                                  received, trio.current_time() - started, outcome, error))

    # --- forwarding ----------------------------------------------------------------------------

    def _mounted(self) -> MeshNode:
        if self._node is None:
            raise NotMounted("mount TunnelService on a running MeshNode first")
        return self._node

    async def open(self, peer: PeerInfo, name: str) -> client.Tunnel:
        """Open a tunnel to `peer`'s service `name` over the best path available now.

        Raises TunnelRefused (with `.refusal`, a RefusalCode) when the peer says no,
        PeerUnavailable or PeerTimeout when it cannot be reached, a RemoteProtocolError for a
        bad answer, ConfigError for a bad name. The caller closes the returned Tunnel.
        """
        return await client.open_tunnel(self._mounted(), self._connector, self.config,
                                        self._locks, peer, name, TUNNEL_PROTOCOL)

    async def forward(self, peer: PeerInfo, name: str,
                      listen: tuple[str, int] = ("127.0.0.1", 0), *,
                      task_status: TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                      ) -> None:
        """Listen on `listen` and tunnel every accepted TCP connection to `peer`'s `name`.

        Use `await nursery.start(tunnels.forward, peer, name, listen)`, which returns the bound
        (host, port). Runs until cancelled; each local connection gets its own stream on the
        path `open()` finds for it, and ends with a TunnelClosed event (side `forward`).
        """
        node = self._mounted()
        await client.forward(
            lambda: client.open_tunnel(node, self._connector, self.config, self._locks, peer,
                                       name, TUNNEL_PROTOCOL),
            str(peer.peer_id), name, listen, self.config, self._events, task_status)
