"""`ReflectionService`: the trio adapter that mounts reflection on a MeshNode."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from meshnat import _libp2p
from meshnat._libp2p import INetStream, TaskStatus, TProtocol
from meshnat.config import require_in_range, require_positive
from meshnat.endpoint import Endpoint
from meshnat.errors import MeshNatError, RemoteProtocolError
from meshnat.events import EventSink, StreamRejected, ignore_events
from meshnat.limits import Claim
from meshnat.node import MeshNode
from meshnat.reflection.core import ReflectionStatistics, ReflectorCore
from meshnat.reflection.messages import ObserveRequest, ObserveResponse, Transport
from meshnat.wire import decode, encode
from meshnat.wire.error_response import ErrorResponse, refusal_for

log = logging.getLogger(__name__)

REFLECT_PROTOCOL = TProtocol("/meshnat/reflect/1.0.0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReflectionConfig:
    """Limits of a reflector."""

    rate: float = 10.0
    """Requests per second allowed per peer (streams) and per source IP (UDP)."""

    burst: int = 20
    """Requests a peer may make at once before the rate applies."""

    network_rate: float = 40.0
    """UDP requests per second answered per source network (IPv4 /24, IPv6 /56): four hosts
    at the per-IP rate. A network holding many addresses gets no more."""

    network_burst: int = 80
    """UDP requests one source network may make at once before `network_rate` applies."""

    total_rate: float = 2000.0
    """UDP requests per second answered in total (50 networks at their full rate)."""

    total_burst: int = 2000
    """UDP requests answered at once over all sources before `total_rate` applies."""

    max_tracked: int = 10_000
    """Peers, IPs and networks whose rate is remembered; bounds the limiters' memory."""

    max_concurrent_streams: int = 64
    """Streams handled at once; more are reset (load shedding rather than queueing)."""

    max_streams_per_peer: int = 4
    """Streams one peer id may hold open at once (a request needs one)."""

    max_streams_per_network: int = 16
    """Streams one source network may hold open at once: a quarter of the total, so one
    network's silent streams leave room for three others at least."""

    stream_timeout: float = 5.0
    """Seconds a requester has to send its request and read the answer."""

    udp_queue: int = 256
    """Datagrams queued for answering; more are dropped."""

    udp_queue_per_network: int = 16
    """Queued datagrams one source network may hold: its fair share of `udp_queue`."""

    def __post_init__(self) -> None:
        require_positive(self, "rate", "network_rate", "total_rate", "stream_timeout")
        require_in_range(self, 1, 10**9, "burst", "network_burst", "total_burst", "max_tracked",
                         "max_concurrent_streams", "udp_queue")
        require_in_range(self, 1, self.max_concurrent_streams, "max_streams_per_peer",
                         "max_streams_per_network")
        require_in_range(self, 1, self.udp_queue, "udp_queue_per_network")


class ReflectionService:
    """Tells peers which source endpoint this node observes for them (in-mesh STUN).

    Streams on `/meshnat/reflect/1.0.0` report the endpoint of the connection (TCP or QUIC);
    datagrams on the node's UDP port report the UDP source endpoint.
    """

    protocol_id = REFLECT_PROTOCOL

    def __init__(self, config: ReflectionConfig | None = None, *,
                 events: EventSink = ignore_events) -> None:
        self.config = config or ReflectionConfig()
        self._events = events
        config = self.config
        self._core = ReflectorCore(
            rate=config.rate, burst=config.burst, max_keys=config.max_tracked,
            network_rate=config.network_rate, network_burst=config.network_burst,
            total_rate=config.total_rate, total_burst=config.total_burst,
            max_streams=config.max_concurrent_streams,
            max_streams_per_peer=config.max_streams_per_peer,
            max_streams_per_network=config.max_streams_per_network,
            udp_queue=config.udp_queue, udp_queue_per_network=config.udp_queue_per_network,
        )

    def statistics(self) -> ReflectionStatistics:
        return self._core.statistics()

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        core = self._core

        def accept(data: bytes, src: Endpoint) -> tuple[bytes, Endpoint, Claim] | None:
            claim = core.enqueue_datagram(src)  # a fair share of the queue per network
            return None if claim is None else (data, src, claim)

        def on_full(item: tuple[bytes, Endpoint, Claim]) -> None:
            core.dequeue_datagram(item[2])
            core.note_dropped()

        with (_libp2p.handling(node.host, self.protocol_id, "reflect", self._handle),
              _libp2p.tapped(node.udp, accept, self.config.udp_queue,
                             on_full=on_full) as receive):
            task_status.started()
            async for data, src, claim in receive:
                core.dequeue_datagram(claim)
                reply = core.answer_datagram(data, src, trio.current_time())
                if reply is not None:
                    try:
                        await node.udp.sendto(reply, src)
                    except (OSError, MeshNatError) as exc:
                        log.debug("reflect: udp reply to %s failed: %s", src, exc)

    async def _handle(self, stream: INetStream) -> None:
        observed = _libp2p.remote_endpoint(stream)
        slot = self._core.open_stream(str(_libp2p.stream_peer(stream)), observed)
        if slot is None:  # this peer, its network or the reflector holds its share already
            self._events(StreamRejected(self.protocol_id, "busy"))
            await _libp2p.reset_quietly(stream)
            return
        try:
            timeout = self.config.stream_timeout
            with _libp2p.map_peer_errors("reflect", timeout), trio.fail_after(timeout):
                frame = await _libp2p.read_frame(stream)
                try:
                    request = decode(frame, ObserveRequest)
                except RemoteProtocolError as exc:  # answered, so the peer learns why
                    self._core.note_malformed()
                    log.debug("reflect: bad request: %s", exc)
                    response: ObserveResponse | ErrorResponse = refusal_for(exc)
                else:
                    response = self._core.answer_stream(
                        request, observed,
                        Transport(_libp2p.transport_of(stream)),
                        str(_libp2p.stream_peer(stream)), trio.current_time(),
                    )
                await _libp2p.write_frame(stream, encode(response))
                await stream.close()
            if isinstance(response, ErrorResponse):
                self._events(StreamRejected(self.protocol_id, response.code.name.lower()))
        except RemoteProtocolError as exc:  # an unreadable frame: nothing to answer
            self._core.note_malformed()
            self._events(StreamRejected(self.protocol_id, "malformed"))
            log.debug("reflect: bad frame: %s", exc)
            await _libp2p.reset_quietly(stream)
        except MeshNatError as exc:
            self._core.note_dropped()
            log.debug("reflect: dropped stream: %s", exc)
            await _libp2p.reset_quietly(stream)
        finally:
            self._core.close_stream(slot)
