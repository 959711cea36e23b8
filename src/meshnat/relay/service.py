"""`RelayService` (hop, on public nodes) and `RelayClient` (reserve, dial circuits).

Both use py-libp2p's circuit relay v2 (`/libp2p/circuit/relay/0.2.0/{hop,stop}`), so meshnat
nodes interoperate with other libp2p relays. What py-libp2p gets wrong is worked around here:
reservations are explicit (its auto-reservation runs once, then every 300 s), circuits are
dialled through the transport itself (`host.connect` drops `/p2p-circuit` addresses), and its
handlers are guarded (an escaping exception would kill the swarm).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn, PeerInfo, TaskStatus, tcp_first
from meshnat.errors import ConfigError, MeshNatError, NotMounted, RelayUnavailable
from meshnat.node import MeshNode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayServiceConfig:
    """Limits that protect a relay. Defaults suit a mesh relay; a public one may go lower."""

    circuit_duration: float = 120.0
    """Seconds a circuit may last (the libp2p reference relay's value)."""

    circuit_bytes: int = 1 << 20
    """Bytes a circuit may carry (1 MiB; the libp2p reference value is 128 KiB per direction):
    enough to coordinate and to carry a chat; bulk data belongs on a punched path."""

    max_circuits: int = 16
    """Concurrent circuits through this relay."""

    max_reservations: int = 128
    """Peers holding a reservation at once."""

    reservation_ttl: float = 3600.0
    """Seconds a reservation lasts before the client must refresh it."""

    def __post_init__(self) -> None:
        for name in ("circuit_duration", "reservation_ttl"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        for name in ("circuit_bytes", "max_circuits", "max_reservations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def limits(self) -> RelayLimits:
        return RelayLimits(duration=int(self.circuit_duration), data=self.circuit_bytes,
                           max_circuit_conns=self.max_circuits,
                           max_reservations=self.max_reservations,
                           reservation_ttl=int(self.reservation_ttl))


async def _run_circuit_protocol(node: MeshNode, protocol: CircuitV2Protocol, *, hop: bool,
                                task_status: TaskStatus[None]) -> None:
    handlers = {STOP_PROTOCOL: protocol._handle_stop_stream}
    if hop:
        handlers[HOP_PROTOCOL] = protocol._handle_hop_stream
    for protocol_id, handler in handlers.items():
        node.host.set_stream_handler(protocol_id,
                                     _libp2p.guarded_handler(str(protocol_id), handler))
    try:
        async with background_trio_service(protocol):
            task_status.started()
            await trio.sleep_forever()
    finally:
        for protocol_id in handlers:
            node.host.remove_stream_handler(protocol_id)


class RelayService:
    """Relays circuits for peers that reserved (circuit relay v2 hop), within the limits."""

    def __init__(self, config: RelayServiceConfig | None = None) -> None:
        self.config = config or RelayServiceConfig()

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        protocol = CircuitV2Protocol(node.host, limits=self.config.limits(), allow_hop=True)
        await _run_circuit_protocol(node, protocol, hop=True, task_status=task_status)


class RelayClient:
    """Reserves on relays (so peers can reach this node through them) and dials circuits."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._node: MeshNode | None = None
        self._transport: Any = None
        self._nursery: trio.Nursery | None = None

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        limits = RelayServiceConfig().limits()
        protocol = CircuitV2Protocol(node.host, limits=limits, allow_hop=False)
        # STOP only: RelayRole.CLIENT would reserve on every relay it sees, on its own schedule
        self._transport = CircuitV2Transport(
            node.host, protocol, RelayConfig(roles=RelayRole.STOP, limits=limits))
        async with trio.open_nursery() as nursery:
            self._node, self._nursery = node, nursery
            try:
                await nursery.start(lambda task_status: _run_circuit_protocol(
                    node, protocol, hop=False, task_status=task_status))
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._node = self._nursery = None

    def _mounted(self) -> tuple[MeshNode, trio.Nursery]:
        if self._node is None or self._nursery is None:
            raise NotMounted("mount RelayClient on a running MeshNode first")
        return self._node, self._nursery

    async def reserve(self, relay: PeerInfo) -> multiaddr.Multiaddr:
        """Reserve on `relay` (refreshed before expiry); returns this node's circuit address."""
        node, nursery = self._mounted()
        stream = await node.open_stream(tcp_first(relay), HOP_PROTOCOL, timeout=self._timeout)
        try:
            with _libp2p.map_peer_errors("reserve", self._timeout), \
                    trio.fail_after(self._timeout):
                ok = await self._transport.reserve(stream, relay.peer_id, nursery)
        finally:
            await _libp2p.reset_quietly(stream)
        if not ok:
            raise RelayUnavailable(f"relay {relay.peer_id} refused the reservation")
        log.info("relay: reserved on %s", relay.peer_id)
        return self.circuit_addr(relay, node.peer_id)

    async def dial(self, relay: PeerInfo, target: ID) -> INetConn:
        """Open a relayed connection to `target` through `relay` (authenticated end to end)."""
        node, _ = self._mounted()
        await node.connect(tcp_first(relay), timeout=self._timeout)
        address = self.circuit_addr(relay, target)
        with _libp2p.map_peer_errors("circuit", self._timeout), trio.fail_after(self._timeout):
            try:
                conn: INetConn = await self._transport.dial(address)
            except MeshNatError:
                raise
            except ConnectionError as exc:  # py-libp2p's circuit errors
                raise RelayUnavailable(f"circuit to {target} via {relay.peer_id}: {exc}") from exc
        return conn

    @staticmethod
    def circuit_addr(relay: PeerInfo, target: ID) -> multiaddr.Multiaddr:
        base = next(a for a in tcp_first(relay).addrs)
        return base.encapsulate(f"/p2p/{relay.peer_id}/p2p-circuit/p2p/{target}")

