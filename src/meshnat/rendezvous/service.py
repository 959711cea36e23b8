"""`RendezvousService`: a rendezvous point any public mesh node may mount.

Nodes register their signed address record under a namespace (a network name) and look up the
others'. Every record is verified here before it is kept (a forged, expired or replayed record
is refused with INVALID_RECORD), and verified again by every reader.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from meshnat import _libp2p
from meshnat._libp2p import INetStream, TaskStatus, TProtocol
from meshnat.errors import PeerTimeout, PeerUnavailable, RemoteProtocolError
from meshnat.limits import RELAYED, SlotLimit, network_of
from meshnat.node import MeshNode
from meshnat.records import verify_record
from meshnat.rendezvous.core import RendezvousConfig, RendezvousCore
from meshnat.rendezvous.messages import Discover, Discovered, Register, Registered, Unregister
from meshnat.wire import decode, encode
from meshnat.wire.error_response import ErrorCode, ErrorResponse, refusal_for

log = logging.getLogger(__name__)

RENDEZVOUS_PROTOCOL = TProtocol("/meshnat/rendezvous/1.0.0")


@dataclass(frozen=True, slots=True)
class RendezvousStatistics:
    registrations: int
    namespaces: int
    streams_held: int
    streams_refused: int
    """Streams reset for want of a slot (per peer, per network or in total)."""


class RendezvousService:
    """Serves `/meshnat/rendezvous/1.0.0`: one request and one answer per stream."""

    protocol_id = RENDEZVOUS_PROTOCOL

    def __init__(self, config: RendezvousConfig | None = None) -> None:
        self.core = RendezvousCore(config)
        self.config = self.core.config
        self._streams = SlotLimit(total=self.config.max_concurrent_streams,
                                  per_peer=self.config.max_streams_per_peer,
                                  per_network=self.config.max_streams_per_network)

    def statistics(self) -> RendezvousStatistics:
        return RendezvousStatistics(self.core.registrations(), self.core.namespaces(),
                                    self._streams.held, sum(self._streams.refused.values()))

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        with _libp2p.handling(node.host, self.protocol_id, "rendezvous", self._handle):
            task_status.started()
            while True:  # bounded memory even for namespaces nobody touches again
                await trio.sleep(self.config.min_ttl)
                self.core.expire(trio.current_time())

    async def _handle(self, stream: INetStream) -> None:
        peer = str(_libp2p.stream_peer(stream))
        observed = _libp2p.remote_endpoint(stream)
        network = RELAYED if observed is None else network_of(observed.ip)
        slot = self._streams.acquire(peer, network)
        if slot is None:  # this peer, its network or the point holds its share of streams
            log.debug("rendezvous: no stream slot for %s (%s)", peer, self._streams.last_refusal)
            await _libp2p.reset_quietly(stream)
            return
        timeout = self.config.stream_timeout
        try:
            with _libp2p.map_peer_errors("rendezvous", timeout), trio.fail_after(timeout):
                frame = await _libp2p.read_frame(stream)
                try:
                    request = decode(frame, Register, Discover, Unregister)
                except RemoteProtocolError as exc:
                    log.debug("rendezvous: bad request from %s: %s", peer, exc)
                    answer: Registered | Discovered | ErrorResponse = refusal_for(exc)
                else:
                    answer = self._answer(peer, network, request)
                await _libp2p.write_frame(stream, encode(answer))
                await stream.close()
        except (RemoteProtocolError, PeerTimeout, PeerUnavailable) as exc:
            log.debug("rendezvous: dropped stream from %s: %s", peer, exc)
            await _libp2p.reset_quietly(stream)
        finally:
            self._streams.release(slot)

    def _answer(self, peer: str, network: str, request: Register | Discover | Unregister
                ) -> Registered | Discovered | ErrorResponse:
        now = trio.current_time()
        if not self.core.allow(peer, now):
            return ErrorResponse(request.txid, ErrorCode.RATE_LIMITED, "too many requests")
        if isinstance(request, Discover):
            return self.core.discover(request, now)
        if isinstance(request, Unregister):
            return self.core.unregister(peer, request, now)
        wall = time.time()  # a record's expiry is on the wall clock its signer shares
        try:
            record = verify_record(request.record, now=wall)
        except RemoteProtocolError as exc:
            log.debug("rendezvous: refused record from %s: %s", peer, exc)
            return ErrorResponse(request.txid, ErrorCode.INVALID_RECORD, str(exc))
        answer = self.core.register(peer, request, record_peer=record.key, record_seq=record.seq,
                                    record_left=record.expires_at - wall, now=now,
                                    network=network)
        if isinstance(answer, Registered):
            log.info("rendezvous: %s registered in %r for %ds", peer, request.namespace,
                     answer.ttl)
        return answer
