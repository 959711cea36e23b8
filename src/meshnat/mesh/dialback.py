"""`/meshnat/dialback/1.1.0`: is this node reachable? Ask a peer to dial back.

Two uses: the mesh's reachability (the listen ports) and a router port mapping's confirmation
(`PortMapper`: the mapped port, at the mapping's external IP, which the request names so the
dialler refuses if it sees the requester elsewhere).
Amplification-safe: the peer dials only the IP its request arrived from (never an address
the requester names), only over a direct connection, one handshake per transport per request,
rate-limited per peer and per source network, and from a fresh port (never its listening
socket: the requester's NAT would let that in through the mapping of the requester's own
connection to it). Over each connection it made, the peer sends the request's id
(`DialBackProof`); the requester believes only that: an inbound connection, authenticated as
the peer by Noise or TLS, carrying the id of its own request. Both ends then close it.
Several services may be mounted on one node (a mesh's and a port mapper's): they share the
requests waiting for proofs, and one serves the protocol at a time.
The service also marks a mesh member: peers that speak it are meshnat nodes (`_libp2p.dht`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from weakref import WeakKeyDictionary

import multiaddr
import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn, INetStream, PeerInfo, TaskStatus, TProtocol
from meshnat._libp2p.dial import dial_once
from meshnat.errors import (
    MeshNatError,
    NotMounted,
    PeerTimeout,
    PeerUnavailable,
    RemoteProtocolError,
)
from meshnat.exchange import request
from meshnat.limits import network_of
from meshnat.mesh.messages import DialBackProof, DialBackRequest, DialBackResponse
from meshnat.node import MeshNode
from meshnat.ratelimit import RateLimiter
from meshnat.wire import decode, encode, new_txid
from meshnat.wire.error_response import ErrorCode, ErrorResponse, refusal_for

log = logging.getLogger(__name__)

DIALBACK_PROTOCOL = TProtocol("/meshnat/dialback/1.1.0")
DIAL_TIMEOUT = 5.0
"""Seconds one dial back (connection and proof) may take."""
WITNESS_GRACE = 2.0
"""Seconds the requester waits, after a positive answer, for the proofs still on their way."""

_Proof = tuple[str, Any]  # (transport, the muxed connection that carried the proof)


class _Shared:
    """What the services mounted on one node share: the requests waiting for proofs, and the
    services serving, the one that answers requests (the latest that does) handling streams."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, tuple[ID, trio.MemorySendChannel[_Proof]]] = {}
        self.serving: list[DialBackService] = []

    def install(self, node: MeshNode) -> None:
        if not self.serving:
            node.host.remove_stream_handler(DIALBACK_PROTOCOL)
            return
        answering = [s for s in self.serving if s.answers] or self.serving
        node.host.set_stream_handler(DIALBACK_PROTOCOL, _libp2p.guarded_handler(
            "dialback", answering[-1]._handle))


_SHARED: WeakKeyDictionary[MeshNode, _Shared] = WeakKeyDictionary()


class DialBackService:
    """Answers dial-back requests (at most `rate` per second per peer and per source network;
    with `answers=False` it refuses them) and asks peers for them (`dial_back`)."""

    def __init__(self, *, rate: float = 0.5, burst: int = 4, answers: bool = True) -> None:
        self._limits = (RateLimiter(rate=rate, burst=burst), RateLimiter(rate=rate, burst=burst))
        self.answers = answers
        self._node: MeshNode | None = None
        self.dialled = 0

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        shared = _SHARED.setdefault(node, _Shared())
        self._node = node
        shared.serving.append(self)
        try:
            shared.install(node)
            task_status.started()
            await trio.sleep_forever()
        finally:
            shared.serving.remove(self)
            shared.install(node)
            self._node = None

    def _mounted(self) -> MeshNode:
        if self._node is None:
            raise NotMounted("mount DialBackService on a running MeshNode first")
        return self._node

    # --- the dialler's side --------------------------------------------------------------

    async def _handle(self, stream: INetStream) -> None:
        node, peer = self._mounted(), _libp2p.stream_peer(stream)
        timeout = 2 * DIAL_TIMEOUT + 5.0
        try:
            with _libp2p.map_peer_errors("dialback", timeout), trio.fail_after(timeout):
                try:
                    msg = decode(await _libp2p.read_frame(stream), DialBackRequest, DialBackProof)
                except RemoteProtocolError as exc:
                    await _libp2p.write_frame(stream, encode(refusal_for(exc)))
                    return
                if isinstance(msg, DialBackProof):
                    self._proved(peer, msg, stream)
                    await _libp2p.reset_quietly(stream)  # read: the dialler may close
                    return
                await _libp2p.write_frame(stream, encode(await self._answer(node, peer, msg,
                                                                            stream)))
                await stream.close()
        except (RemoteProtocolError, PeerTimeout, PeerUnavailable) as exc:
            log.debug("dialback: dropped stream from %s: %s", peer, exc)
            await _libp2p.reset_quietly(stream)

    async def _answer(self, node: MeshNode, peer: ID, req: DialBackRequest,
                      stream: INetStream) -> DialBackResponse | ErrorResponse:
        if not self.answers:
            return ErrorResponse(req.txid, ErrorCode.UNAVAILABLE, "no dial-backs from here")
        observed = _libp2p.remote_endpoint(stream)
        if observed is None:
            return ErrorResponse(req.txid, ErrorCode.FORBIDDEN_TARGET,
                                 "dial-back needs a direct connection")
        if req.ip is not None and req.ip != observed.ip:
            return ErrorResponse(req.txid, ErrorCode.FORBIDDEN_TARGET,
                                 "dial-backs go only to the address the request comes from")
        now, (per_peer, per_network) = trio.current_time(), self._limits
        if not (per_peer.allow(str(peer), now)
                and per_network.allow(network_of(observed.ip), now)):
            return ErrorResponse(req.txid, ErrorCode.RATE_LIMITED, "too many requests")
        proto = "ip6" if observed.ip.version == 6 else "ip4"
        tcp = udp = None
        if req.tcp_port is not None:
            tcp = await self._dial(node, peer, req.txid, multiaddr.Multiaddr(
                f"/{proto}/{observed.ip}/tcp/{req.tcp_port}"), observed.ip.version)
        if req.udp_port is not None:
            udp = await self._dial(node, peer, req.txid, multiaddr.Multiaddr(
                f"/{proto}/{observed.ip}/udp/{req.udp_port}/quic-v1"), observed.ip.version)
        return DialBackResponse(req.txid, tcp, udp)

    async def _dial(self, node: MeshNode, peer: ID, txid: bytes,
                    addr: multiaddr.Multiaddr, version: int) -> bool:
        self.dialled += 1
        conn: INetConn | None = None
        try:
            # from a fresh port (`source` port 0), never the listening socket QUIC dials
            # leave from: the requester's NAT would let that in through the mapping of the
            # requester's own connection to it, and a NATed node would count itself public
            transport = "udp" if "/udp/" in str(addr) else "tcp"
            source = (str(node.listen_endpoint(transport, version).ip), 0)
            with _libp2p.map_peer_errors(f"dial back {addr}", DIAL_TIMEOUT), \
                    trio.fail_after(DIAL_TIMEOUT):
                conn = await dial_once(node.host.get_network(), addr, peer, source)  # no retries
                stream = await _libp2p.open_stream_on(node.host, conn, DIALBACK_PROTOCOL,
                                                      DIAL_TIMEOUT)
                await _libp2p.write_frame(stream, encode(DialBackProof(txid)))
                # a half-close: close() over QUIC ends the reading side too, the read below
                # returned at once and the connection closed under a proof not yet read (the
                # requester's swarm then reset its stream and dropped the proof)
                await _libp2p.close_write(stream)
                with contextlib.suppress(MeshNatError), _libp2p.map_peer_errors("proof"):
                    await _libp2p.read_frame(stream)  # until the requester has read it
            return True
        except MeshNatError as exc:
            log.debug("dialback: %s not reachable at %s: %s", peer, addr, exc)
            return False
        finally:
            if conn is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(DIAL_TIMEOUT):
                    await conn.close()

    # --- the requester's side ------------------------------------------------------------

    def _proved(self, peer: ID, proof: DialBackProof, stream: INetStream) -> None:
        waiting = _SHARED[self._mounted()].waiting.get(proof.txid)
        if waiting is None or waiting[0] != peer or _libp2p.is_relayed(stream):
            log.debug("dialback: unexpected proof from %s", peer)
            return
        # the stream's own connection, not the swarm's list: an inbound QUIC connection may
        # carry its first stream before the swarm has registered it
        muxed = stream.muxed_conn
        if not muxed.is_initiator:  # the peer dialled it: inbound
            with contextlib.suppress(trio.WouldBlock):
                waiting[1].send_nowait((_libp2p.transport_of(stream), muxed))

    async def dial_back(self, peer: PeerInfo, *, timeout: float = 15.0,
                        ports: Mapping[str, int] | None = None,
                        ip: IPv4Address | IPv6Address | None = None) -> set[str]:
        """Ask `peer` to dial this node back: the transports (`tcp`, `udp`) on which it did,
        as proved over the connections it made. `ports`: per transport, the port to dial
        (default: the listen ports); `ip`: where `peer` must see this node (else it refuses).
        Raises PeerUnavailable, PeerTimeout, PeerRefused or another RemoteProtocolError."""
        node = self._mounted()
        if ports is None:
            ports = {t: e.port for t in ("tcp", "udp") for e in node.local_endpoints(t)[:1]}
        message = DialBackRequest(new_txid(), ports.get("tcp"), ports.get("udp"), ip)
        send, proofs = trio.open_memory_channel[_Proof](4)
        waiting = _SHARED[node].waiting
        waiting[message.txid] = (peer.peer_id, send)
        witnessed: set[str] = set()
        conns: list[Any] = []
        try:
            # over any connection: its source address is the one the peer will dial (true
            # for a host with one address, or behind a NAT)
            answer = await request(node, peer, DIALBACK_PROTOCOL, message, DialBackResponse,
                                   timeout=timeout)
            claimed = sum(bool(ok) for ok in (answer.tcp_ok, answer.udp_ok))
            with trio.move_on_after(WITNESS_GRACE):
                while len(witnessed) < claimed:
                    transport, conn = await proofs.receive()
                    witnessed.add(transport)
                    conns.append(conn)
            return witnessed
        finally:
            del waiting[message.txid]
            with trio.CancelScope(shield=True), trio.move_on_after(DIAL_TIMEOUT):
                for conn in conns:
                    await conn.close()
