"""One request and one answer over a fresh stream: the client side every request/response
meshnat protocol shares (classification, rendezvous)."""

from __future__ import annotations

import hmac
from typing import TypeVar

import trio

from meshnat import _libp2p
from meshnat._libp2p import PeerInfo, TProtocol, tcp_first
from meshnat.errors import MalformedMessage, PeerRefused
from meshnat.node import MeshNode
from meshnat.wire import Message, decode, encode
from meshnat.wire.error_response import ErrorResponse

M = TypeVar("M", bound=Message)


async def request(node: MeshNode, peer: PeerInfo, protocol: TProtocol, message: Message,
                  expected: type[M], *, timeout: float, version: int | None = None) -> M:
    """Send `message` on a new `protocol` stream to `peer` and return its `expected` answer.

    TCP addresses are tried first (where UDP is blocked a QUIC dial would spend the whole
    timeout); a peer given without addresses must already be connected. `version`: over a
    TCP connection of that IP family from the listen port (`open_stream_from_listen_port`),
    for a request about this node's address in that family (the peer sees it there).
    Raises PeerRefused
    for an ErrorResponse, MalformedMessage for an answer to
    another request, other RemoteProtocolError subclasses, PeerUnavailable or PeerTimeout.
    """
    if version is not None and peer.addrs:
        stream = await node.open_stream_from_listen_port(peer, protocol, timeout=timeout,
                                                         version=version)
    else:
        target = tcp_first(peer) if peer.addrs else peer  # no address: an existing connection
        stream = await node.open_stream(target, protocol, timeout=timeout)
    with _libp2p.map_peer_errors(str(protocol), timeout), trio.fail_after(timeout):
        try:
            await _libp2p.write_frame(stream, encode(message))
            reply = decode(await _libp2p.read_frame(stream), expected, ErrorResponse)
        finally:
            await _libp2p.reset_quietly(stream)
    if not hmac.compare_digest(reply.txid, message.txid):
        raise MalformedMessage("reply to a request id this node did not send")
    if isinstance(reply, ErrorResponse):
        raise PeerRefused(reply.code.name.lower().replace("_", "-"), reply.reason)
    return reply
