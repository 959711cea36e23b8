"""`ProbeHelperService`: what a reflector offers classifying nodes.

A second UDP socket that answers observe requests (so a client can test mapping across two
ports of one IP), and `/meshnat/classify/1.1.0`: tell the second port, and send probe
datagrams into a requester's mapping from a fresh port (filtering tests, and a UDP port
mapping's confirmation; a TCP mapping's is `/meshnat/dialback`). Probes only ever go to the
requester's own IP address, at most `probe_copies` tiny datagrams per request,
rate-limited per peer: the service cannot be used to send traffic at a third party.

On a dual-stack node the second port is open in both families, with one port number (an
IPv6 client classifies its IPv6 firewall or NAT66 through it), and probes leave from a fresh
socket of the target's family.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import trio

from meshnat import _libp2p
from meshnat._libp2p import INetStream, TaskStatus, TProtocol
from meshnat.classify.messages import (
    InfoRequest,
    InfoResponse,
    ProbeAck,
    ProbeDatagram,
    ProbeRequest,
)
from meshnat.config import require_in_range, require_positive
from meshnat.endpoint import udp_source
from meshnat.errors import ConfigError, MeshNatError, RemoteProtocolError
from meshnat.limits import network_of
from meshnat.node import MeshNode
from meshnat.ratelimit import RateLimiter
from meshnat.reflection.core import ReflectorCore
from meshnat.wire import MAX_DATAGRAM_SIZE, decode, encode, frame_datagram
from meshnat.wire.error_response import ErrorCode, ErrorResponse, refusal_for

log = logging.getLogger(__name__)

CLASSIFY_PROTOCOL = TProtocol("/meshnat/classify/1.1.0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeHelperConfig:
    """Limits of the probe helper a reflector mounts."""

    alt_port: int = 0
    """The second UDP port (0: any free port)."""

    probe_rate: float = 2.0
    """Probe requests per second allowed per peer."""

    probe_burst: int = 10
    """Probe requests a peer may make at once."""

    network_rate: float = 8.0
    """Probe requests per second allowed per source network (IPv4 /24, IPv6 /56): four peers'
    worth, however many identities the network holds."""

    network_burst: int = 40
    """Probe requests one source network may make at once."""

    probe_copies: int = 2
    """Datagrams sent per probe request (a lost one must not fake a filtering verdict)."""

    stream_timeout: float = 5.0
    """Seconds a requester has to send its request."""

    def __post_init__(self) -> None:
        require_in_range(self, 0, 65535, "alt_port")
        require_in_range(self, 1, 10**6, "probe_burst", "network_burst")
        require_in_range(self, 1, 4, "probe_copies")
        require_positive(self, "probe_rate", "network_rate", "stream_timeout")


class ProbeHelperService:
    """Mount on reflectors so that nodes can classify their NAT through them."""

    protocol_id = CLASSIFY_PROTOCOL

    def __init__(self, config: ProbeHelperConfig | None = None) -> None:
        self.config = config or ProbeHelperConfig()
        self._limiter = RateLimiter(rate=self.config.probe_rate, burst=self.config.probe_burst)
        self._network_limiter = RateLimiter(rate=self.config.network_rate,
                                            burst=self.config.network_burst)
        self._alt_core = ReflectorCore(rate=10.0, burst=20, max_keys=10_000)
        self._alt: dict[int, trio.socket.SocketType] = {}
        """The second port's socket per IP version (one port number)."""
        self._node: MeshNode | None = None
        self.probes_sent = self.refused = 0
        self.impossible_sources = 0
        """Datagrams on the second port dropped for an impossible source (port 0, ...)."""

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        sockets = await self._bind_alt(node)
        try:
            self._alt, self._node = sockets, node
            with _libp2p.handling(node.host, self.protocol_id, "classify", self._handle):
                async with trio.open_nursery() as nursery:
                    for alt in sockets.values():
                        nursery.start_soon(self._answer_on, alt)
                    task_status.started()
        finally:
            self._alt, self._node = {}, None
            for alt in sockets.values():
                alt.close()

    async def _bind_alt(self, node: MeshNode) -> dict[int, trio.socket.SocketType]:
        """The second port in each family the node listens on, one port number: the first
        family's port (`alt_port`, or any free one), then the others on that number; an
        ephemeral number taken in another family is tried afresh (up to 8 times)."""
        versions = sorted(node.ip_versions)
        for attempt in range(8):
            sockets: dict[int, trio.socket.SocketType] = {}
            port = self.config.alt_port
            try:
                for version in versions:
                    ip = node.listen_endpoint("udp", version).ip
                    alt = trio.socket.socket(socket.AF_INET if version == 4 else socket.AF_INET6,
                                             socket.SOCK_DGRAM)
                    sockets[version] = alt
                    if version == 6:
                        alt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    await alt.bind((str(ip), port))
                    port = alt.getsockname()[1]
                return sockets
            except OSError:
                for alt in sockets.values():
                    alt.close()
                if self.config.alt_port or attempt == 7:
                    raise
        raise AssertionError("unreachable")

    async def _answer_on(self, alt: trio.socket.SocketType) -> None:
        """Answer observe requests on the second port, until cancelled."""
        while True:
            data, addr = await alt.recvfrom(MAX_DATAGRAM_SIZE + 1)
            src = udp_source(addr)
            if src is None:  # port 0, multicast, ...: nobody to answer
                self.impossible_sources += 1
                log.debug("classify: dropped a datagram from %.60s", addr)
                continue
            reply = self._alt_core.answer_datagram(data, src, trio.current_time())
            if reply is not None:
                try:
                    await alt.sendto(reply, src.to_sockaddr())
                except OSError as exc:
                    log.debug("classify: reply to %s failed: %s", src, exc)

    @property
    def alt_port(self) -> int:
        """The second port's number (the same in every family)."""
        if not self._alt:
            raise ConfigError("the probe helper is not mounted")
        port: int = next(iter(self._alt.values())).getsockname()[1]
        return port

    async def _handle(self, stream: INetStream) -> None:
        timeout = self.config.stream_timeout
        try:
            with _libp2p.map_peer_errors("classify", timeout), trio.fail_after(timeout):
                frame = await _libp2p.read_frame(stream)
                reply: InfoResponse | ProbeAck | ErrorResponse
                try:
                    request = decode(frame, InfoRequest, ProbeRequest)
                except RemoteProtocolError as exc:  # answered, so the peer learns why
                    reply = refusal_for(exc)
                else:
                    if isinstance(request, InfoRequest):
                        reply = InfoResponse(request.txid, self.alt_port)
                    else:
                        reply = await self._probe(request, stream)
                await _libp2p.write_frame(stream, encode(reply))
                await stream.close()
        except MeshNatError as exc:
            log.debug("classify: dropped stream: %s", exc)
            await _libp2p.reset_quietly(stream)

    def _refusal(self, request: ProbeRequest, stream: INetStream) -> ErrorResponse | None:
        """Probes go only to the requester's own IP, within the rate limits."""
        requester = _libp2p.remote_endpoint(stream)
        peer = str(_libp2p.stream_peer(stream))
        if requester is None or requester.ip != request.target.ip:
            self.refused += 1
            return ErrorResponse(request.txid, ErrorCode.FORBIDDEN_TARGET,
                                 "probes go only to the requester's own address")
        now = trio.current_time()
        if not (self._limiter.allow(peer, now)
                and self._network_limiter.allow(network_of(requester.ip), now)):
            self.refused += 1
            return ErrorResponse(request.txid, ErrorCode.RATE_LIMITED, "too many probes")
        return None

    async def _probe(self, request: ProbeRequest, stream: INetStream) -> ProbeAck | ErrorResponse:
        refused = self._refusal(request, stream)
        if refused is not None:
            return refused
        assert self._node is not None
        datagram = frame_datagram(encode(ProbeDatagram(request.txid)))
        version = request.target.ip.version  # the requester's own IP: its stream's family
        if version not in self._alt:
            return ErrorResponse(request.txid, ErrorCode.UNAVAILABLE, "no such IP family here")
        source = self._node.listen_endpoint("udp", version)
        with trio.socket.socket(socket.AF_INET if version == 4 else socket.AF_INET6,
                                socket.SOCK_DGRAM) as fresh:
            try:
                await fresh.bind((str(source.ip), 0))
                for _ in range(self.config.probe_copies):
                    await fresh.sendto(datagram, request.target.to_sockaddr())
            except OSError as exc:
                log.debug("classify: probe to %s failed: %s", request.target, exc)
                return ErrorResponse(request.txid, ErrorCode.UNAVAILABLE, "probe not sent")
        self.probes_sent += 1
        log.debug("classify: probe sent to %s", request.target)
        return ProbeAck(request.txid)
