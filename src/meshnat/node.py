"""`MeshNode`: a py-libp2p host (TCP + QUIC) that meshnat services mount on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from ipaddress import ip_address
from socket import SOCK_DGRAM as UDP
from socket import SOCK_STREAM as TCP
from typing import TYPE_CHECKING, Protocol, Self, TypeVar, overload

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
from meshnat.dialing import dial_first
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ConfigError,
    LocalProtocolError,
    NotMounted,
    PeerUnavailable,
)
from meshnat.listen_port import ListenPortConnections
from meshnat.node_config import QUIC_STACK_ENV, NodeConfig
from meshnat.paths import PathKind
from meshnat.supervision import Mounted, supervise

__all__ = ["QUIC_STACK_ENV", "MeshNode", "NodeConfig", "Service"]

if TYPE_CHECKING:
    from meshnat.connect import Path as MeshPath
    from meshnat.mesh import Mesh
    from meshnat.portmap import PortMapper

log = logging.getLogger(__name__)

class Service(Protocol):
    """Anything that can be mounted: registers handlers, calls `task_status.started()`,
    runs until cancelled and unregisters in `finally`."""

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None: ...


S = TypeVar("S", bound=Service)


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
        self._mounted: dict[int, Mounted] = {}
        self._stack: AsyncExitStack | None = None
        self._listen_port = ListenPortConnections()
        self._punch_sources: list[PunchedConnections] = []
        self.port_mapper: PortMapper | None = None
        """The PortMapper mounted by `NodeConfig.port_mapping` (None when off)."""
        self._mesh: Mesh | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        config = self.config
        for ip in config.listen_ips():
            _libp2p.ensure_ports_free(ip, config.tcp_port, config.udp_port)
        key_pair = _libp2p.load_or_create_key(config.key_file)
        ips = config.listen_ips()
        # dual stack: one port number in both families (a free one on both when 0)
        listen = config.listen_addrs(
            config.tcp_port or (len(ips) > 1 and _libp2p.shared_free_port(ips, TCP)) or 0,
            config.udp_port or (len(ips) > 1 and _libp2p.shared_free_port(ips, UDP)) or 0)
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
        if config.port_mapping:
            from meshnat.portmap import PortMapConfig, PortMapper  # portmap imports this module
            mapping = config.port_mapping
            try:
                self.port_mapper = await self.mount(PortMapper(
                    mapping if isinstance(mapping, PortMapConfig) else None,
                    helpers=config.port_mapping_helpers))
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        if self.config.bootstrap or self.config.mesh is not None:
            await self._join_mesh()
        log.info("node up peer=%s addrs=%s", self.peer_id, [str(a) for a in self.addrs])
        return self

    async def _join_mesh(self) -> None:
        from meshnat.mesh import Mesh  # the mesh's services are built on this module

        try:
            bootstrap = _libp2p.merge_peer_addrs(list(self.config.bootstrap))
            self._mesh = await self.mount(Mesh(self.config.mesh, bootstrap=bootstrap))
            if self.port_mapper is not None:
                self.port_mapper.use_records(self._mesh.authority)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    @property
    def mesh(self) -> Mesh:
        """The self-organizing mesh service (NodeConfig `bootstrap` or `mesh`)."""
        if self._mesh is None:
            raise NotMounted("the node has no mesh (give NodeConfig bootstrap or mesh)")
        return self._mesh

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
            self._listen_port.clear()
            self._mesh = None

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

    def listen_endpoint(self, transport: str, version: int | None = None) -> Endpoint:
        """The bound endpoint of the `tcp` or `udp` listener (may be a wildcard address): the
        IPv`version` one if given, else the first (IPv4 on a dual-stack node). Both families
        share the port number."""
        found = [parsed[1] for addr in self.host.get_network().listeners.values()
                 for bound in addr.get_addrs()
                 if (parsed := _libp2p.endpoint_of(bound)) is not None and parsed[0] == transport
                 and (version is None or parsed[1].ip.version == version)]
        if found:
            return min(found, key=lambda e: e.ip.version)  # IPv4 first
        family = "" if version is None else f"IPv{version} "
        raise LocalProtocolError(f"the node has no {family}{transport} listener")

    @property
    def ip_versions(self) -> frozenset[int]:
        """The IP versions the node listens on (4, 6; both on a dual-stack node)."""
        return frozenset(ip_address(ip).version for ip in self.config.listen_ips())

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
        entry = Mounted(trio.CancelScope())

        async def run(task_status: TaskStatus[None]) -> None:
            try:
                await supervise(type(service).__name__,
                                lambda status: service.serve(self, task_status=status),
                                self.config, entry, task_status)
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

    @overload
    async def connect(self, peer: PeerInfo, *, timeout: float | None = None) -> None: ...
    @overload
    async def connect(self, peer: ID, *, timeout: float | None = None) -> MeshPath: ...

    async def connect(self, peer: PeerInfo | ID, *, timeout: float | None = None
                      ) -> MeshPath | None:
        """Connect to `peer` at its known addresses (reusing an existing connection).

        Happy eyeballs (RFC 8305 §5, `meshnat.dialing`): the families alternate, a new
        attempt starts `ATTEMPT_DELAY` after the previous one or as soon as it failed, and the
        first connection wins; an address that swallows packets delays the next by 250 ms.

        Given only a peer id, the node's mesh finds the peer's signed record in the DHT and
        climbs the ladder (direct, relayed, punched in the background): the Path is returned.
        """
        if isinstance(peer, ID):
            return await self.mesh.connect(peer)
        limit = timeout or self.config.dial_timeout
        if self.connections(peer.peer_id):  # one that takes new streams, not a dying one
            return None
        if not peer.addrs:
            raise ConfigError(f"no address known for {peer.peer_id}")
        await dial_first(self.host, peer, limit)
        return None

    async def open_stream(
        self, peer: PeerInfo, protocol: TProtocol, *, timeout: float | None = None
    ) -> INetStream:
        """Connect if needed and open a stream speaking `protocol`."""
        await self.connect(peer, timeout=timeout)
        limit = timeout or self.config.stream_timeout
        with _libp2p.map_peer_errors(f"open {protocol}", limit), trio.fail_after(limit):
            return await self.host.new_stream(peer.peer_id, [protocol])


    async def open_stream_from_listen_port(
        self, peer: PeerInfo, protocol: TProtocol, *, timeout: float | None = None,
        version: int | None = None,
    ) -> INetStream:
        """Open a `protocol` stream over a TCP connection dialled from the TCP listen port
        (to the peer's IPv`version` address if given, else its first one of a family this
        node listens on, IPv4 first).

        The NAT mapping a peer observes on it is then the one other peers can reach (hole
        punching needs exactly that one). The connection is kept and reused per peer and
        family; one the peer made between the same two endpoints serves as well
        (`meshnat.listen_port`: a second dial of a four-tuple would fail).
        """
        limit = timeout or self.config.dial_timeout
        tcp = sorted(((a, e[1]) for a in peer.addrs
                      if (e := _libp2p.endpoint_of(a)) is not None and e[0] == "tcp"
                      and e[1].ip.version in self.ip_versions
                      and (version is None or e[1].ip.version == version)),
                     key=lambda found: found[1].ip.version)
        if not tcp:
            family = "" if version is None else f"IPv{version} "
            raise ConfigError(f"no {family}TCP address known for {peer.peer_id}")
        addr, remote = tcp[0]
        local = self.listen_endpoint("tcp", remote.ip.version)
        with _libp2p.map_peer_errors(f"open {protocol}", limit), trio.fail_after(limit):
            conn = await self._listen_port.get(self.host, peer.peer_id, addr, local, remote)
            return await _libp2p.open_stream_on(self.host, conn, protocol, limit)
