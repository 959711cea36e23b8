"""`RelayService` (hop, on public nodes) and `RelayClient` (reserve, dial circuits).

Both are py-libp2p's circuit relay v2 through `_libp2p.relay.CircuitRelay`, so meshnat nodes
interoperate with other libp2p relays; meshnat adds the limits' defaults, explicit reservations
and typed errors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn, PeerInfo, TaskStatus, tcp_first
from meshnat._libp2p.relay import HOP_PROTOCOL, CircuitRelay
from meshnat.config import require_in_range, require_positive
from meshnat.errors import ConfigError, MeshNatError, NotMounted, RelayUnavailable
from meshnat.node import MeshNode
from meshnat.punch.health import HealthConfig
from meshnat.punch.keepalive import HealthWatch, close_dead
from meshnat.relay.policy import HopLimits, HopStatistics, RelayCandidate, rank_relays

log = logging.getLogger(__name__)

MAX_RESERVE_BACKOFF = 30.0
"""Seconds between attempts at most to reserve again on a relay whose connection died."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayServiceConfig:
    """Limits that protect a relay. Defaults suit a mesh relay; a public one may go lower."""

    circuit_duration: float = 120.0
    """Seconds a circuit may last (the libp2p reference relay's value)."""

    circuit_bytes: int = 1 << 20
    """Bytes a circuit may carry (1 MiB; the libp2p reference value is 128 KiB per direction):
    enough to coordinate and to carry a chat; bulk data belongs on a punched path."""

    max_circuits: int = 16
    """Concurrent circuits through this relay (go-libp2p: 16), and to any one peer."""

    max_circuits_per_peer: int = 4
    """Concurrent circuits one peer id may have asked for."""

    max_circuits_per_network: int = 4
    """Concurrent circuits peers of one source network (IPv4 /24, IPv6 /56) may have asked
    for: a quarter of `max_circuits`, so one network leaves room for three others at least."""

    max_reservations: int = 128
    """Peers holding a reservation at once (go-libp2p: 128)."""

    max_reservations_per_network: int = 8
    """Reservations held by peers of one source network (go-libp2p: 8 per IP, 32 per ASN):
    fresh peer ids are free, so one host could otherwise take all of them."""

    reservation_ttl: float = 3600.0
    """Seconds a reservation lasts before the client must refresh it."""

    max_hop_streams: int = 64
    """Hop streams (a reservation or circuit request being read and answered) at once."""

    max_hop_streams_per_peer: int = 4
    """Hop streams one peer id may have open at once before its circuit starts."""

    max_hop_streams_per_network: int = 16
    """Hop streams peers of one source network may have open at once."""

    hop_read_timeout: float = 10.0
    """Seconds a hop stream has to deliver its one message; a silent or slow one is reset."""

    hop_stream_timeout: float = 30.0
    """Seconds a hop exchange may take in all (a circuit: this plus `circuit_duration`)."""

    def __post_init__(self) -> None:
        require_positive(self, "circuit_duration", "reservation_ttl", "hop_read_timeout",
                         "hop_stream_timeout")
        require_in_range(self, 1, 2**40, "circuit_bytes", "max_circuits", "max_reservations",
                         "max_hop_streams", "max_circuits_per_peer", "max_circuits_per_network",
                         "max_reservations_per_network", "max_hop_streams_per_peer",
                         "max_hop_streams_per_network")

    def hop_limits(self) -> HopLimits:
        """The hop's bounds; a per-peer or per-network bound above its total is the total."""
        return HopLimits(
            max_reservations=self.max_reservations,
            reservations_per_network=min(self.max_reservations_per_network,
                                         self.max_reservations),
            reservation_ttl=self.reservation_ttl, max_circuits=self.max_circuits,
            circuits_per_peer=min(self.max_circuits_per_peer, self.max_circuits),
            circuits_per_network=min(self.max_circuits_per_network, self.max_circuits),
            max_hop_streams=self.max_hop_streams,
            hop_streams_per_peer=min(self.max_hop_streams_per_peer, self.max_hop_streams),
            hop_streams_per_network=min(self.max_hop_streams_per_network,
                                        self.max_hop_streams))

    def circuit_relay(self, node: MeshNode, *, hop: bool,
                      limits: HopLimits | None = None) -> CircuitRelay:
        return CircuitRelay(node.host, hop=hop, circuit_duration=self.circuit_duration,
                            circuit_bytes=self.circuit_bytes, max_circuits=self.max_circuits,
                            max_reservations=self.max_reservations,
                            reservation_ttl=self.reservation_ttl, hop_limits=limits,
                            hop_read_timeout=self.hop_read_timeout,
                            hop_stream_timeout=self.hop_stream_timeout)


class RelayService:
    """Relays circuits for peers that reserved (circuit relay v2 hop), within the limits:
    reservations, circuits and hop streams bounded per peer id, per source network and in
    total (`RelayServiceConfig`)."""

    def __init__(self, config: RelayServiceConfig | None = None) -> None:
        self.config = config or RelayServiceConfig()
        self._limits = self.config.hop_limits()

    def statistics(self) -> HopStatistics:
        return self._limits.statistics()

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        relay = self.config.circuit_relay(node, hop=True, limits=self._limits)
        await relay.run(task_status=task_status)


class RelayClient:
    """Reserves on relays (so peers can reach this node through them) and dials circuits.

    A reservation is held while mounted: the connection it rides is pinged (`HealthWatch`, as
    punched paths are), and when it dies (a NAT that flushed its table breaks it silently) it
    is closed and the reservation made again on a new one 1 s later (a backoff that doubles
    with each failure, to at most `MAX_RESERVE_BACKOFF`).
    """

    def __init__(self, *, timeout: float = 10.0, health: HealthConfig | None = None) -> None:
        self._timeout = timeout
        self._health = health or HealthConfig()
        self._held: set[ID] = set()
        self._node: MeshNode | None = None
        self._relay: CircuitRelay | None = None
        self._nursery: trio.Nursery | None = None

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        relay = RelayServiceConfig().circuit_relay(node, hop=False)
        async with trio.open_nursery() as nursery:
            self._node, self._relay, self._nursery = node, relay, nursery
            try:
                await nursery.start(relay.run)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._node = self._relay = self._nursery = None

    def _mounted(self) -> tuple[MeshNode, CircuitRelay, trio.Nursery]:
        if self._node is None or self._relay is None or self._nursery is None:
            raise NotMounted("mount RelayClient on a running MeshNode first")
        return self._node, self._relay, self._nursery

    async def reserve(self, relay: PeerInfo) -> multiaddr.Multiaddr:
        """Reserve on `relay` (refreshed before expiry, and made again whenever the connection
        to the relay dies); returns this node's circuit address."""
        address = await self._reserve_once(relay)
        node, _, nursery = self._mounted()
        if relay.peer_id not in self._held:
            self._held.add(relay.peer_id)
            nursery.start_soon(self._hold, relay, node)
        return address

    async def _hold(self, relay: PeerInfo, node: MeshNode) -> None:
        # `node` is passed in: unmounted before this task first ran, it must not raise
        delay, answers_ping = 1.0, True
        try:
            while True:
                conns = [c for c in node.host.get_network().get_connections(relay.peer_id)
                         if not c.is_closed]
                if conns and answers_ping:
                    watch = HealthWatch(node.host, conns[0], self._health)
                    dead = await watch.run()
                    reason = dead.reason if dead is not None else "stopped"
                    if watch.pings_answered == 0 and not conns[0].is_closed:
                        answers_ping = False  # not every relay answers libp2p ping
                        log.info("relay: %s answers no ping (%s); watching only for its "
                                 "connection to close", relay.peer_id, reason)
                        continue
                    log.info("relay: the connection to %s died (%s); reserving again",
                             relay.peer_id, reason)
                    await close_dead(conns[0], self._health.ping_timeout)
                elif conns:
                    await _libp2p.wait_closed(conns[0])
                await trio.sleep(delay)  # the backoff itself (also: a node closing its
                # connections is unmounting this service next, and must not dial again)
                try:
                    await self._reserve_once(relay)
                    delay = 1.0
                except MeshNatError as exc:
                    log.info("relay: reserving again on %s failed: %s", relay.peer_id, exc)
                    delay = min(2 * delay, MAX_RESERVE_BACKOFF)
        finally:
            self._held.discard(relay.peer_id)

    async def _reserve_once(self, relay: PeerInfo) -> multiaddr.Multiaddr:
        node, circuits, nursery = self._mounted()
        stream = await node.open_stream(tcp_first(relay), HOP_PROTOCOL, timeout=self._timeout)
        try:
            with _libp2p.map_peer_errors("reserve", self._timeout), \
                    trio.fail_after(self._timeout):
                ok = await circuits.reserve(stream, relay.peer_id, nursery)
        finally:
            await _libp2p.reset_quietly(stream)
        if not ok:
            raise RelayUnavailable(f"relay {relay.peer_id} refused the reservation")
        log.info("relay: reserved on %s", relay.peer_id)
        return self.circuit_addr(relay, node.peer_id)

    async def reserve_best(self, relays: Sequence[PeerInfo], *, count: int = 1
                           ) -> list[multiaddr.Multiaddr]:
        """Reserve on the `count` best of `relays` (reachable, then lowest ping RTT).

        Returns this node's circuit addresses; raises RelayUnavailable if none could be had.
        """
        if count < 1:
            raise ConfigError(f"count must be at least 1, got {count}")
        node, _, _ = self._mounted()
        measured: list[RelayCandidate] = []

        async def measure(index: int, relay: PeerInfo) -> None:
            started = trio.current_time()
            try:
                await node.connect(tcp_first(relay), timeout=self._timeout)
            except MeshNatError as exc:
                log.info("relay: %s unreachable: %s", relay.peer_id, exc)
                measured.append(RelayCandidate(str(index), None))
                return
            rtt = trio.current_time() - started  # the handshake: a few RTTs, an upper bound
            (conn, *_) = node.host.get_network().get_connections(relay.peer_id)
            pinged = trio.current_time()
            try:
                await _libp2p.ping_over(node.host, conn, timeout=self._timeout)
                rtt = trio.current_time() - pinged
            except MeshNatError as exc:  # not every relay answers libp2p ping
                log.info("relay: %s did not answer ping (%s), ranked by handshake time",
                         relay.peer_id, exc)
            measured.append(RelayCandidate(str(index), rtt))

        async with trio.open_nursery() as nursery:
            for index, relay in enumerate(relays):
                nursery.start_soon(measure, index, relay)
        addrs: list[multiaddr.Multiaddr] = []
        for candidate in rank_relays(measured):
            if len(addrs) >= count:
                break
            try:
                addrs.append(await self.reserve(relays[int(candidate.name)]))
            except MeshNatError as exc:
                log.info("relay: reservation on %s failed: %s",
                         relays[int(candidate.name)].peer_id, exc)
        if not addrs:
            raise RelayUnavailable(f"no reservation on any of {len(relays)} relays")
        return addrs

    async def dial(self, relay: PeerInfo, target: ID) -> INetConn:
        """Open a relayed connection to `target` through `relay` (authenticated end to end)."""
        node, circuits, _ = self._mounted()
        await node.connect(tcp_first(relay), timeout=self._timeout)
        address = self.circuit_addr(relay, target)
        with _libp2p.map_peer_errors("circuit", self._timeout), trio.fail_after(self._timeout):
            try:
                conn = await circuits.dial(address)
            except MeshNatError:
                raise
            except ConnectionError as exc:  # py-libp2p's circuit errors
                raise RelayUnavailable(f"circuit to {target} via {relay.peer_id}: {exc}") from exc
        return conn

    @staticmethod
    def circuit_addr(relay: PeerInfo, target: ID) -> multiaddr.Multiaddr:
        """`target`'s address through `relay`'s first address (TCP first); an address that
        ends in the relay's /p2p already (the peerstore's, from identify) is not doubled."""
        base = str(next(a for a in tcp_first(relay).addrs)).removesuffix(f"/p2p/{relay.peer_id}")
        return _libp2p.parse_multiaddr(f"{base}/p2p/{relay.peer_id}/p2p-circuit/p2p/{target}")

