"""py-libp2p's circuit relay v2 (`/libp2p/circuit/relay/0.2.0/{hop,stop}`), as meshnat uses it.

Reservations are explicit (its `RelayRole.CLIENT` reserves on every relay it sees, once at start
and then every 300 s), circuits are dialled through its transport (`host.connect` drops
`/p2p-circuit` addresses), and its stream handlers are guarded.

Conformance: against js-libp2p 2.10's circuit relay v2 server (tests/interop) py-libp2p's client
needs no workaround: reservation, STATUS codes and circuits work as the spec says. The `limit` a
relay sends (js: duration in milliseconds, not the spec's seconds) is ignored by py-libp2p; the
relay itself enforces it.
"""

from __future__ import annotations

from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from meshnat._libp2p.streams import guarded_handler

__all__ = ["HOP_PROTOCOL", "CircuitRelay"]


class CircuitRelay:
    """Circuit relay v2 on one host: a hop (relay) or the stop side plus a dialling client."""

    def __init__(self, host: IHost, *, hop: bool, circuit_duration: float, circuit_bytes: int,
                 max_circuits: int, max_reservations: int, reservation_ttl: float) -> None:
        limits = RelayLimits(duration=int(circuit_duration), data=circuit_bytes,
                             max_circuit_conns=max_circuits, max_reservations=max_reservations,
                             reservation_ttl=int(reservation_ttl))
        self._host, self._hop = host, hop
        self._protocol = CircuitV2Protocol(host, limits=limits, allow_hop=hop)
        roles = RelayRole.HOP | RelayRole.STOP if hop else RelayRole.STOP
        self._transport: Any = CircuitV2Transport(host, self._protocol,
                                                  RelayConfig(roles=roles, limits=limits))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the relay protocols until cancelled; handlers are removed on the way out."""
        handlers = {STOP_PROTOCOL: self._protocol._handle_stop_stream}
        if self._hop:
            handlers[HOP_PROTOCOL] = self._protocol._handle_hop_stream
        for protocol_id, handler in handlers.items():
            self._host.set_stream_handler(protocol_id, guarded_handler(str(protocol_id), handler))
        try:
            async with background_trio_service(self._protocol):
                task_status.started()
                await trio.sleep_forever()
        finally:
            for protocol_id in handlers:
                self._host.remove_stream_handler(protocol_id)

    async def reserve(self, stream: INetStream, relay: ID, nursery: trio.Nursery) -> bool:
        """Reserve over an open hop stream; refreshing runs in `nursery` before expiry."""
        ok: bool = await self._transport.reserve(stream, relay, nursery)
        return ok

    async def dial(self, circuit: multiaddr.Multiaddr) -> INetConn:
        """A relayed connection, secured and muxed end to end (raises ConnectionError)."""
        conn: INetConn = await self._transport.dial(circuit)
        return conn
