"""py-libp2p's circuit relay v2 (`/libp2p/circuit/relay/0.2.0/{hop,stop}`), as meshnat uses it.

Reservations are explicit (its `RelayRole.CLIENT` reserves on every relay it sees, once at start
and then every 300 s), circuits are dialled through its transport (`host.connect` drops
`/p2p-circuit` addresses), and its stream handlers are guarded.

The hop side is py-libp2p's, behind a gate of meshnat's own (`_HopGate`): py-libp2p bounds
reservations and circuits per destination only, takes the reserving peer id from the message
(any peer could reserve as any other), loops reading further messages on a hop stream for 30 s
each and leaves silent or slow streams open. The gate reads exactly one message per hop stream
within `hop_read_timeout`, reserves only for the connection's authenticated peer id, checks
`HopLimits` (per peer id, per source network, in total) before py-libp2p does any work, bounds
the whole exchange by `hop_stream_timeout` (a circuit by its duration on top) and resets the
stream when done. py-libp2p frees a reservation only when its TTL runs out (it checks for a
connection only as a circuit arrives), so peers with fresh ids could reserve, leave and hold the
slots for the TTL: the gate watches the swarm's disconnections and frees a peer's reservation,
in `HopLimits` and py-libp2p's table both, once the peer's last connection to the relay is gone
(go-libp2p does the same); the TTL stays the upper bound.

Conformance: against js-libp2p 2.10's circuit relay v2 server (tests/interop) py-libp2p's client
needs no workaround: reservation, STATUS codes and circuits work as the spec says. The `limit` a
relay sends (js: duration in milliseconds, not the spec's seconds) is ignored by py-libp2p; the
relay itself enforces it.

Circuit bytes are forwarded by `_ForwardingProtocol._relay_data`, not py-libp2p's: its loop read
65,535 bytes at a time (two Yamux frames per read), took any read error, end of stream included,
for a failure to retry three times with 0.2-0.6 s sleeps, and then closed both streams, so a
half-close from one side cut off whatever the other side still had to send (a request, then
its answer). Here each direction copies what one read returns (whole Yamux frames, up to
`FRAME_PAYLOAD`), passes end of stream on as a half-close and leaves the other direction
running; a reset or failure on either side resets both. The circuit's byte budget is shared by
both directions as before; its duration is enforced by `_HopGate`.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, cast

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.relay.circuit_v2.utils import maybe_consume_signed_record, read_delimited_msg
from libp2p.tools.anyio_service import background_trio_service

from meshnat._libp2p.connections import has_open_connection, watch_disconnections
from meshnat._libp2p.streams import handling, is_relayed, remote_endpoint, reset_quietly
from meshnat._libp2p.yamux import FRAME_PAYLOAD
from meshnat.limits import network_of

if TYPE_CHECKING:
    from meshnat.relay.policy import HopLimits

__all__ = ["HOP_PROTOCOL", "CircuitRelay"]

log = logging.getLogger(__name__)


class CircuitRelay:
    """Circuit relay v2 on one host: a hop (relay) or the stop side plus a dialling client."""

    def __init__(self, host: IHost, *, hop: bool, circuit_duration: float, circuit_bytes: int,
                 max_circuits: int, max_reservations: int, reservation_ttl: float,
                 hop_limits: HopLimits | None = None, hop_read_timeout: float = 10.0,
                 hop_stream_timeout: float = 30.0) -> None:
        limits = RelayLimits(duration=int(circuit_duration), data=circuit_bytes,
                             max_circuit_conns=max_circuits, max_reservations=max_reservations,
                             reservation_ttl=int(reservation_ttl))
        self._host, self._hop = host, hop
        self._protocol = _ForwardingProtocol(host, limits=limits, allow_hop=hop)
        self._gate = None if hop_limits is None else _HopGate(
            self._protocol, hop_limits, read_timeout=hop_read_timeout,
            stream_timeout=hop_stream_timeout, circuit_duration=circuit_duration)
        roles = RelayRole.HOP | RelayRole.STOP if hop else RelayRole.STOP
        self._transport: Any = CircuitV2Transport(host, self._protocol,
                                                  RelayConfig(roles=roles, limits=limits))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the relay protocols until cancelled; handlers are removed on the way out."""
        handlers = {STOP_PROTOCOL: self._protocol._handle_stop_stream}
        if self._hop:
            handlers[HOP_PROTOCOL] = (self._protocol._handle_hop_stream if self._gate is None
                                      else self._gate.handle)
        async with background_trio_service(self._protocol):
            await self._protocol.event_started.wait()
            # py-libp2p's service registers its own, unguarded handlers as it starts: ours
            # replace them only once it has (and it removes them again as it stops)
            with ExitStack() as stack:
                if self._gate is not None:
                    stack.enter_context(watch_disconnections(self._host, self._gate.disconnected))
                for protocol_id, handler in handlers.items():
                    stack.enter_context(handling(self._host, protocol_id, str(protocol_id),
                                                 handler, bounded=False))
                task_status.started()
                await trio.sleep_forever()

    async def reserve(self, stream: INetStream, relay: ID, nursery: trio.Nursery) -> bool:
        """Reserve over an open hop stream; refreshing runs in `nursery` before expiry."""
        ok: bool = await self._transport.reserve(stream, relay, nursery)
        return ok

    async def dial(self, circuit: multiaddr.Multiaddr) -> INetConn:
        """A relayed connection, secured and muxed end to end (raises ConnectionError)."""
        conn: INetConn = await self._transport.dial(circuit)
        return conn


class _ForwardingProtocol(CircuitV2Protocol):
    """py-libp2p's relay v2 with meshnat's circuit forwarding (see the module docstring)."""

    async def _relay_data(self, src_stream: INetStream, dst_stream: INetStream, peer_id: ID,
                          deadline: float | None = None,
                          circuit_data_limit: list[int] | None = None) -> None:
        clean = False
        try:
            while deadline is None or time.monotonic() < deadline:
                try:
                    data = await src_stream.read(FRAME_PAYLOAD)
                except StreamEOF:
                    await cast(Any, dst_stream).close_write()
                    clean = True
                    return
                if circuit_data_limit is not None:
                    if len(data) > circuit_data_limit[0]:
                        log.debug("relay: circuit of %s over its byte budget", peer_id)
                        break
                    circuit_data_limit[0] -= len(data)
                await dst_stream.write(data)
        except Exception as exc:  # a reset or broken side: the circuit ends both ways
            log.debug("relay: circuit of %s ended: %s", peer_id, type(exc).__name__)
        finally:
            self._active_relays.pop(peer_id, None)
            if not clean:
                with trio.CancelScope(shield=True):
                    await reset_quietly(src_stream)
                    await reset_quietly(dst_stream)


class _HopGate:
    """One hop stream: one message, read within a deadline, checked against `HopLimits`."""

    def __init__(self, protocol: CircuitV2Protocol, limits: HopLimits, *, read_timeout: float,
                 stream_timeout: float, circuit_duration: float) -> None:
        self._protocol, self._limits = protocol, limits
        self._read_timeout, self._stream_timeout = read_timeout, stream_timeout
        self._circuit_timeout = circuit_duration + stream_timeout

    async def handle(self, stream: INetStream) -> None:
        if is_relayed(stream):  # py-libp2p answers PERMISSION_DENIED, as the spec says
            with trio.move_on_after(self._stream_timeout):
                await self._protocol._handle_hop_stream(stream)
            await reset_quietly(stream)
            return
        peer_id = stream.muxed_conn.peer_id
        peer = str(peer_id)
        observed = remote_endpoint(stream)
        network = "unknown" if observed is None else network_of(observed.ip)
        slot = self._limits.open_stream(peer, network)
        if slot is None:
            log.debug("relay: hop stream from %s refused (%s has its share)", peer, network)
            await reset_quietly(stream)
            return
        try:
            message = None
            with trio.move_on_after(self._read_timeout):
                try:
                    message = await read_delimited_msg(stream, HopMessage)
                except Exception as exc:  # py-libp2p's read and protobuf errors, unmapped
                    log.debug("relay: unreadable hop message from %s: %s", peer,
                              type(exc).__name__)
                    await self._status(stream, StatusCode.MALFORMED_MESSAGE)
                    return
            if message is None:
                log.debug("relay: hop stream from %s sent nothing in %gs", peer,
                          self._read_timeout)
                return
            if message.HasField("senderRecord") and not maybe_consume_signed_record(
                    message, self._protocol.host, peer_id):
                log.debug("relay: bad sender record from %s", peer)
                return
            if message.type == HopMessage.RESERVE:
                await self._reserve(stream, message, peer, network)
            elif message.type == HopMessage.CONNECT:
                self._limits.close_stream(slot)
                slot = None
                await self._connect(stream, message, peer, network)
            else:
                await self._status(stream, StatusCode.MALFORMED_MESSAGE)
        finally:
            if slot is not None:
                self._limits.close_stream(slot)
            await reset_quietly(stream)

    def disconnected(self, conn: INetConn) -> None:
        """The swarm dropped `conn`: free its peer's reservation if no connection is left."""
        self._release_if_gone(conn.muxed_conn.peer_id, "its last connection closed")

    def _release_if_gone(self, peer_id: ID, why: str) -> None:
        if has_open_connection(self._protocol.host, peer_id):
            return
        self._protocol.resource_manager._reservations.pop(peer_id, None)
        if self._limits.release(str(peer_id)):
            log.debug("relay: reservation of %s freed (%s)", peer_id, why)

    async def _reserve(self, stream: INetStream, message: Any, peer: str, network: str) -> None:
        message.ClearField("peer")  # a reservation is for the connection's own peer id
        if not self._limits.reserve(peer, network, trio.current_time()):
            log.debug("relay: reservation for %s refused (limit)", peer)
            await self._status(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED)
            return
        try:
            with trio.move_on_after(self._stream_timeout):
                await self._protocol._handle_reserve(stream, message)
                await stream.close()
        finally:  # its connection may have closed (and been reported) while it was answered
            self._release_if_gone(stream.muxed_conn.peer_id, "no connection left")

    async def _connect(self, stream: INetStream, message: Any, peer: str, network: str) -> None:
        circuit = self._limits.open_circuit(peer, network)
        if circuit is None:
            log.debug("relay: circuit for %s refused (limit)", peer)
            await self._status(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED)
            return
        try:
            with trio.move_on_after(self._circuit_timeout) as scope:
                await self._protocol._handle_connect(stream, message)
            if scope.cancelled_caught:  # py-libp2p checks the duration only between reads
                log.debug("relay: circuit from %s cut after %gs", peer, self._circuit_timeout)
                await self._drop_circuit(stream)
        finally:
            self._limits.close_circuit(circuit)

    async def _drop_circuit(self, stream: INetStream) -> None:
        relays = self._protocol._active_relays
        for key, (source, target) in list(relays.items()):
            if source is stream:
                del relays[key]
                if target is not None:
                    await reset_quietly(target)

    async def _status(self, stream: INetStream, code: StatusCode) -> None:
        with trio.move_on_after(self._read_timeout):  # a peer that does not read: give up
            await self._protocol._send_status(stream, code, code.name)
