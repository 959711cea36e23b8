"""`MeshNode`: a py-libp2p host (TCP + QUIC) that meshnat services mount on."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Protocol, Self, TypeVar, cast, get_args

import multiaddr
import trio

from meshnat import _libp2p
from meshnat._libp2p import (
    ID,
    Connection,
    DatagramTap,
    IHost,
    INetConn,
    INetStream,
    PeerInfo,
    PunchedConnections,
    TaskStatus,
    TProtocol,
)
from meshnat._libp2p.host import QuicStack
from meshnat.config import require_in_range, require_positive
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ConfigError,
    LocalProtocolError,
    NotMounted,
    PeerUnavailable,
    ServiceFailed,
)
from meshnat.paths import PathKind

log = logging.getLogger(__name__)

MAX_RESTART_BACKOFF = 5.0
"""Longest wait before a failed service is restarted."""


QUIC_STACK_ENV = "MESHNAT_QUIC_STACK"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Where a MeshNode listens and who it is."""

    listen_ip: str = "0.0.0.0"
    """IP address to listen on for TCP and QUIC; `0.0.0.0` means every IPv4 interface."""

    tcp_port: int = 0
    """TCP listen port; 0 picks a free one."""

    udp_port: int = 0
    """UDP (QUIC) listen port; 0 picks a free one. Reflection and punching share it."""

    key_file: Path | None = None
    """Ed25519 identity file, created (mode 0600) if missing; None gives a fresh identity."""

    dial_timeout: float = 10.0
    """Seconds to wait for one outbound connection."""

    stream_timeout: float = 10.0
    """Seconds to wait for protocol negotiation of one outbound stream."""

    max_connections: int = 2048
    """Connections the host keeps at most (a relay holds one per reservation)."""

    max_connections_per_network: int = 128
    """Inbound connections the peers of one source network (IPv4 /24, IPv6 /56; relay
    circuits count as one) hold at most: fresh peer ids are free, so without it one host
    fills `max_connections`."""

    quic_stack: QuicStack = field(
        default_factory=lambda: cast(QuicStack, os.environ.get(QUIC_STACK_ENV, "meshnat")))
    """QUIC transport: `meshnat` (meshnat's own on qh3, the default, ~20x faster;
    `_libp2p.quic`) or `py-libp2p` (its own, aioquic). The environment variable
    MESHNAT_QUIC_STACK sets the default."""

    service_restarts: int = 5
    """Restarts a mounted service that fails gets within `service_restart_window`; the next
    failure stops the node with ServiceFailed (systemd's StartLimitBurst is 5 as well)."""

    service_restart_window: float = 60.0
    """Seconds over which a service's failures are counted against `service_restarts`."""

    service_restart_backoff: float = 0.1
    """Seconds before a failed service is restarted (systemd's RestartSec default), doubled
    for each further failure within the window, at most `MAX_RESTART_BACKOFF`."""

    def __post_init__(self) -> None:
        try:
            ip_address(self.listen_ip)
        except ValueError:
            raise ConfigError(f"listen_ip must be an IP address, got {self.listen_ip!r}") from None
        require_in_range(self, 0, 65535, "tcp_port", "udp_port")
        require_in_range(self, 1, 1_000_000, "max_connections", "max_connections_per_network")
        require_in_range(self, 0, 1000, "service_restarts")
        if self.quic_stack not in get_args(QuicStack):
            raise ConfigError(f"quic_stack must be one of {get_args(QuicStack)}")
        require_positive(self, "dial_timeout", "stream_timeout", "service_restart_window",
                         "service_restart_backoff")

    def listen_addrs(self) -> list[multiaddr.Multiaddr]:
        ip = ip_address(self.listen_ip)
        proto = "ip4" if ip.version == 4 else "ip6"
        return [
            multiaddr.Multiaddr(f"/{proto}/{ip}/tcp/{self.tcp_port}"),
            multiaddr.Multiaddr(f"/{proto}/{ip}/udp/{self.udp_port}/quic-v1"),
        ]


class Service(Protocol):
    """Anything that can be mounted: registers handlers, calls `task_status.started()`,
    runs until cancelled and unregisters in `finally`."""

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None: ...


S = TypeVar("S", bound=Service)


class _StartedFlag:
    """A task_status that remembers whether started() was called."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self._inner, self.is_set = inner, False

    def started(self, value: None = None) -> None:
        self.is_set = True
        self._inner.started(value)


@dataclass(slots=True)
class _Mounted:
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)


class MeshNode:
    """A running libp2p host plus the meshnat services mounted on it.

    Use as `async with MeshNode(config) as node:`; leaving the block unmounts every service
    and closes the host's listeners and connections.
    """

    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig()
        self._host: IHost | None = None
        self._udp: DatagramTap | None = None
        self._nursery: trio.Nursery | None = None
        self._mounted: dict[int, _Mounted] = {}
        self._stack: AsyncExitStack | None = None
        self._listen_port_conns: dict[ID, INetConn] = {}
        self._punch_sources: list[PunchedConnections] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        _libp2p.ensure_ports_free(self.config.listen_ip, self.config.tcp_port,
                                  self.config.udp_port)
        key_pair = _libp2p.load_or_create_key(self.config.key_file)
        listen = self.config.listen_addrs()
        host = _libp2p.new_libp2p_host(key_pair, listen,
                                       max_connections=self.config.max_connections,
                                       max_connections_per_network=(
                                           self.config.max_connections_per_network),
                                       quic_stack=self.config.quic_stack)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(host.run(listen))
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(self._nursery.cancel_scope.cancel)
            self._host, self._udp = host, DatagramTap(host)
            _libp2p.enable_quic_dial_with_source(host, self._udp)
            self._stack = stack.pop_all()
        log.info("node up peer=%s addrs=%s", self.peer_id, [str(a) for a in self.addrs])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        try:
            if self._host is not None:  # shielded: a failed service has cancelled the node
                with trio.CancelScope(shield=True):
                    await _libp2p.close_connections(self._host)
        finally:
            await self._close_stack(stack, exc_info)

    async def _close_stack(self, stack: AsyncExitStack | None, exc_info: tuple[object, ...]
                           ) -> None:
        try:
            if stack is not None:
                with _libp2p.single_exception():
                    await stack.__aexit__(*exc_info)  # type: ignore[arg-type]
        finally:
            self._host = self._udp = self._nursery = None
            self._mounted.clear()
            self._listen_port_conns.clear()

    # --- identity and addresses --------------------------------------------------------------

    @property
    def host(self) -> IHost:
        if self._host is None:
            raise NotMounted("the node is not running (use `async with MeshNode(...)`)")
        return self._host

    @property
    def udp(self) -> DatagramTap:
        """The node's UDP socket (shared with QUIC) for meshnat datagrams."""
        if self._udp is None:
            raise NotMounted("the node is not running")
        return self._udp

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    @property
    def addrs(self) -> list[multiaddr.Multiaddr]:
        """Concrete listen multiaddrs (never 0.0.0.0), each ending in /p2p/<peer id>."""
        return _libp2p.concrete_addrs(self.host)

    def peer_info(self) -> PeerInfo:
        """How other nodes reach this one: its peer id and concrete addresses."""
        return _libp2p.merge_peer_addrs(self.addrs)[0]

    def local_endpoints(self, transport: str) -> list[Endpoint]:
        """Concrete local endpoints of the `tcp` or `udp` listener (wildcards expanded)."""
        parsed = (_libp2p.endpoint_of(a) for a in self.addrs)
        return [p[1] for p in parsed if p is not None and p[0] == transport]

    def listen_endpoint(self, transport: str) -> Endpoint:
        """The bound endpoint of the `tcp` or `udp` listener (may be a wildcard address)."""
        for addr in self.host.get_network().listeners.values():
            for bound in addr.get_addrs():
                parsed = _libp2p.endpoint_of(bound)
                if parsed is not None and parsed[0] == transport:
                    return parsed[1]
        raise LocalProtocolError(f"the node has no {transport} listener")

    # --- services ----------------------------------------------------------------------------

    async def mount(self, service: S) -> S:
        """Start `service` on this node; returns once its handlers are registered.

        A failure before the service has started is raised here. A running service that fails
        (a meshnat bug: peers can only cause errors the services handle) is logged at ERROR with
        its traceback and restarted after a backoff; past `NodeConfig.service_restarts`
        failures within `service_restart_window` the node stops with ServiceFailed, raised
        from its `async with`. A service is never silently gone.
        """
        if self._nursery is None:
            raise NotMounted("the node is not running")
        if id(service) in self._mounted:
            raise LocalProtocolError(f"{type(service).__name__} is already mounted")
        entry = _Mounted(trio.CancelScope())
        name = type(service).__name__
        config = self.config

        async def run(task_status: TaskStatus[None]) -> None:
            first = _StartedFlag(task_status)
            failures: deque[float] = deque()
            try:
                with entry.scope:  # unmount() cancels it, also during a backoff
                    status = first
                    while True:
                        try:
                            await service.serve(self, task_status=status)
                            return  # the service ended by itself
                        except Exception as exc:
                            if not first.is_set:
                                raise  # mount() reports it to the caller
                            now = trio.current_time()
                            failures.append(now)
                            while failures[0] <= now - config.service_restart_window:
                                failures.popleft()
                            if len(failures) > config.service_restarts:
                                log.error("service %s failed %d times within %g s; stopping "
                                          "the node", name, len(failures),
                                          config.service_restart_window, exc_info=True)
                                raise ServiceFailed(name, len(failures),
                                                    config.service_restart_window) from exc
                            delay = min(config.service_restart_backoff
                                        * 2 ** (len(failures) - 1), MAX_RESTART_BACKOFF)
                            log.error("service %s failed; restarting it in %.2f s (failure %d "
                                      "of %d allowed within %g s)", name, delay, len(failures),
                                      config.service_restarts, config.service_restart_window,
                                      exc_info=True)
                        await trio.sleep(delay)
                        status = _StartedFlag(trio.TASK_STATUS_IGNORED)
            finally:
                self._mounted.pop(id(service), None)
                entry.done.set()

        self._mounted[id(service)] = entry
        await self._nursery.start(run)
        return service

    async def unmount(self, service: Service) -> None:
        """Stop `service` and wait until its handlers are removed."""
        entry = self._mounted.get(id(service))
        if entry is None:
            raise LocalProtocolError(f"{type(service).__name__} is not mounted")
        entry.scope.cancel()
        await entry.done.wait()

    # --- connections and streams -------------------------------------------------------------

    def connections(self, peer: ID) -> list[Connection]:
        """The open connections to `peer`, best first, each labelled with its path.

        The rule (`paths.best_first_key`): a direct or punched connection before a relayed
        one, and a relayed one before a punched one whose health check is probing it after a
        suspected failure (`Connection.doubtful`); oldest first among equals. A connection
        is `punched` when a source registered with `track_punched` (a HolePuncher) holds it
        for the peer.
        """
        return _libp2p.connections_to(self.host, peer, self._punch_sources)

    def describe(self, conn: INetConn) -> Connection:
        """`conn` labelled with its path, as `connections()` labels it."""
        return _libp2p.describe_connection(conn, self._punch_sources)

    def best_connection(self, peer: ID) -> Connection:
        """The first of `connections(peer)`; PeerUnavailable when there is none."""
        found = self.connections(peer)
        if not found:
            raise PeerUnavailable(f"no connection to {peer}")
        return found[0]

    def path_of(self, stream: INetStream) -> PathKind:
        """The path of the connection `stream` runs over, labelled as by `connections()`."""
        return _libp2p.path_of_stream(stream, self._punch_sources)

    @contextmanager
    def track_punched(self, source: PunchedConnections) -> Iterator[None]:
        """While inside, label the connections `source` punched as PathKind.PUNCHED."""
        self._punch_sources.append(source)
        try:
            yield
        finally:
            self._punch_sources.remove(source)

    async def connect(self, peer: PeerInfo, *, timeout: float | None = None) -> None:
        """Connect to `peer` at its known addresses (reusing an existing connection)."""
        limit = timeout or self.config.dial_timeout
        if self.host.get_network().get_connections(peer.peer_id):
            return
        if not peer.addrs:
            raise ConfigError(f"no address known for {peer.peer_id}")
        last: PeerUnavailable | None = None
        network = self.host.get_network()
        with _libp2p.map_peer_errors("connect", limit), trio.fail_after(limit):
            for addr in peer.addrs:
                try:
                    with _libp2p.map_peer_errors(f"dial {addr}"):
                        await network.dial_addr(addr, peer.peer_id)
                except PeerUnavailable as exc:
                    last = exc
                    log.debug("%s", exc)
                    continue
                self.host.get_peerstore().add_addrs(peer.peer_id, peer.addrs, 3600)
                return
        raise PeerUnavailable(f"could not connect to {peer.peer_id}: {last}")

    async def open_stream(
        self, peer: PeerInfo, protocol: TProtocol, *, timeout: float | None = None
    ) -> INetStream:
        """Connect if needed and open a stream speaking `protocol`."""
        await self.connect(peer, timeout=timeout)
        limit = timeout or self.config.stream_timeout
        with _libp2p.map_peer_errors(f"open {protocol}", limit), trio.fail_after(limit):
            return await self.host.new_stream(peer.peer_id, [protocol])


    async def open_stream_from_listen_port(
        self, peer: PeerInfo, protocol: TProtocol, *, timeout: float | None = None
    ) -> INetStream:
        """Open a `protocol` stream over a TCP connection dialled from the TCP listen port.

        The NAT mapping a peer observes on it is then the one other peers can reach (hole
        punching needs exactly that one). The connection is kept and reused per peer.
        """
        limit = timeout or self.config.dial_timeout
        tcp = [a for a in peer.addrs if "/tcp/" in str(a)]
        if not tcp:
            raise ConfigError(f"no TCP address known for {peer.peer_id}")
        source = self.listen_endpoint("tcp").to_sockaddr()
        with _libp2p.map_peer_errors(f"open {protocol}", limit), trio.fail_after(limit):
            conn = self._listen_port_conns.get(peer.peer_id)
            if conn is None or conn.is_closed:
                conn = await self.host.get_network().dial_addr(tcp[0], peer.peer_id, source)
                self._listen_port_conns[peer.peer_id] = conn
            return await _libp2p.open_stream_on(self.host, conn, protocol, limit)
