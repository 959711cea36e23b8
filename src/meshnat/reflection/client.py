"""Asking one reflector what it sees: over a stream, or by datagram from the node's UDP port."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

import trio

from meshnat import _libp2p
from meshnat._libp2p import PeerInfo
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    MalformedMessage,
    PeerRefused,
    PeerTimeout,
)
from meshnat.node import MeshNode
from meshnat.reflection.messages import (
    REQUEST_PADDING,
    ObserveRequest,
    ObserveResponse,
    Transport,
)
from meshnat.reflection.service import REFLECT_PROTOCOL
from meshnat.wire import decode, encode, frame_datagram, new_txid
from meshnat.wire.error_response import ErrorResponse

log = logging.getLogger(__name__)

FIRST_RETRANSMIT = 0.25
"""Seconds before the first UDP retransmission; doubles each time (RFC 8489's RTO idea)."""


@dataclass(frozen=True, slots=True)
class Reflection:
    """One reflector's answer: what it observed, over which transport, and how fast."""

    observed: Endpoint
    transport: Transport
    rtt: float


def _check(reply: ObserveResponse | ErrorResponse, txid: bytes) -> ObserveResponse:
    if not hmac.compare_digest(reply.txid, txid):
        raise MalformedMessage("response to a request id this node did not send")
    if isinstance(reply, ErrorResponse):
        raise PeerRefused(reply.code.name.lower().replace("_", "-"), reply.reason)
    return reply


async def observe_over_stream(node: MeshNode, peer: PeerInfo, *, timeout: float,
                              version: int | None = None) -> Reflection:
    """Ask `peer` over a TCP connection dialled from this node's TCP listen port (to its
    IPv`version` address if given).

    Raises PeerUnavailable, PeerTimeout or a RemoteProtocolError subclass.
    """
    deadline = trio.current_time() + timeout
    stream = await node.open_stream_from_listen_port(peer, REFLECT_PROTOCOL, timeout=timeout,
                                                     version=version)
    txid = new_txid()
    with _libp2p.map_peer_errors("reflect", timeout), trio.fail_at(deadline):
        try:
            started = trio.current_time()
            await _libp2p.write_frame(stream, encode(ObserveRequest(txid)))
            frame = await _libp2p.read_frame(stream)
            reply = decode(frame, ObserveResponse, ErrorResponse)
            rtt = trio.current_time() - started
        finally:
            await _libp2p.reset_quietly(stream)
    answer = _check(reply, txid)
    return Reflection(answer.observed, answer.transport, rtt)


async def observe_over_udp(node: MeshNode, reflector: Endpoint, *, timeout: float) -> Reflection:
    """Ask the reflector at `reflector` (its UDP/QUIC port) by datagram from the node's UDP port.

    Retransmits with doubling intervals until `timeout`. Only an answer with this request's
    id, from the address asked, counts; anything else is dropped. Raises PeerTimeout.
    """
    txid = new_txid()
    datagram = frame_datagram(encode(ObserveRequest(txid, bytes(REQUEST_PADDING))))
    with _libp2p.first_datagram(node.udp, ObserveResponse, txid, src=reflector) as answer:
        interval, sent_at = FIRST_RETRANSMIT, 0.0
        with trio.move_on_after(timeout):
            while not answer.is_set():
                sent_at = trio.current_time()
                try:
                    await node.udp.sendto(datagram, reflector)
                except OSError as exc:
                    log.debug("reflect: udp request to %s failed: %s", reflector, exc)
                with trio.move_on_after(interval):
                    await answer.wait()
                interval *= 2
    reply = answer.message
    if reply is None:
        raise PeerTimeout(f"udp reflection from {reflector}", timeout)
    return Reflection(reply.observed, reply.transport, answer.at - sent_at)
