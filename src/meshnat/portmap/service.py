"""`PortMapper`: asks the gateway to forward the node's listen ports, keeps the mappings and
advertises the ones a mesh peer confirmed.

Mounted on a MeshNode it finds the gateway (the default route's), probes PCP and NAT-PMP at
once (`GatewayProbe`), and runs one `MappingSession` per listen port with the best of them,
or UPnP-IGD through miniupnpc when neither answers. A granted mapping is advertised only once
a dial-back proved it: a helper peer sends a datagram from a fresh port to the mapped UDP
endpoint (ProbeHelperService), or opens one libp2p TCP connection to the mapped TCP port at the
address it sees this node at, from a fresh port, and sends the request's id over it
(`/meshnat/dialback`, DialBackService: only that proof, over an inbound connection Noise
authenticates as the helper, counts). Either must carry the node's own public IP, the
mapping's external one (the helper refuses any other, so nothing is sent at a third party).
A router that lies therefore advertises nothing. Confirmed endpoints go to the RecordAuthority
as mapped addresses (first in the record). Mappings are renewed halfway to expiry, mapped
again after a gateway reboot, and deleted when unmounted.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

import trio

from meshnat import _libp2p
from meshnat._libp2p import PeerInfo, TaskStatus
from meshnat.classify.service import dial_back
from meshnat.endpoint import Endpoint, udp_source
from meshnat.errors import MeshNatError, NotMounted, PeerUnavailable
from meshnat.mesh.dialback import DialBackService
from meshnat.node import MeshNode
from meshnat.portmap import pcp
from meshnat.portmap.config import PortMapConfig
from meshnat.portmap.gateway import default_gateway
from meshnat.portmap.mapping import (
    Lost,
    Mapping,
    MappingEvent,
    MappingProtocol,
    Obtained,
)
from meshnat.portmap.probe import GatewayProbe
from meshnat.portmap.session import MappingSession
from meshnat.portmap.sockets import announcement_socket, local_ip_towards, send_to_gateway
from meshnat.portmap.upnp import UpnpClient, UpnpConflict
from meshnat.records.authority import RecordAuthority, endpoint_addr

log = logging.getLogger(__name__)
_rand = secrets.SystemRandom()


@dataclass(frozen=True, slots=True)
class PortMapStatistics:
    protocol: MappingProtocol | None
    """The protocol of the mappings held (None: none)."""
    held: tuple[Mapping, ...]
    confirmed: tuple[Mapping, ...]
    """Held mappings a dial-back proved; only these are advertised."""
    refuted: int
    """Mappings the gateway granted but no dial-back reached: a router that lies."""
    attempts: int
    failures: tuple[str, ...]
    """The last few reasons a round of mapping failed."""


def _random_port() -> int:
    return _rand.randrange(1024, 65536)


class PortMapper:
    """Router port mapping for a MeshNode (see the module doc). `helpers` are peers that
    confirm mappings (ProbeHelperService for UDP, DialBackService for TCP); without them
    nothing is advertised."""

    def __init__(self, config: PortMapConfig | None = None, *,
                 helpers: Sequence[PeerInfo] = (), records: RecordAuthority | None = None,
                 on_event: Callable[[MappingEvent], None] | None = None) -> None:
        self.config = config or PortMapConfig()
        self._helpers, self._records, self._on_event = list(helpers), records, on_event
        self._node: MeshNode | None = None
        self._held: dict[str, Mapping] = {}
        self._confirmed: dict[str, Mapping] = {}
        self._protocol: MappingProtocol | None = None
        self._refuted = self._attempts = 0
        self._failures: list[str] = []
        self._changed = trio.Event()
        self._waiting: trio.CancelScope | None = None
        self._obtained = False
        """Whether the protocol tried in this round granted anything (else: the next one)."""
        self._rechecks: trio.Nursery | None = None
        """Where `use_helpers` checks held mappings again (while serving)."""
        self._dialback = DialBackService(answers=False)
        """Receives the TCP dial-backs' proofs (it answers no one's requests)."""

    # --- public ------------------------------------------------------------------------------

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        self._node = node
        try:
            async with trio.open_nursery() as self._rechecks:
                await self._rechecks.start(self._dialback.serve, node)
                task_status.started()
                while True:
                    self._attempts += 1
                    try:
                        await self._map_once(node)
                    except MeshNatError as exc:
                        log.info("portmap: no mapping: %s", exc)
                        self._failures = [*self._failures[-4:], str(exc)[:160]]
                    self._forget_all()
                    await trio.sleep(self.config.retry_interval)
        finally:
            self._rechecks = None
            self._forget_all()
            self._node = None

    def use_helpers(self, helpers: Sequence[PeerInfo]) -> None:
        """Confirm mappings with `helpers` from now on (a mesh's reflectors, found at run
        time); a mapping held but not confirmed yet is checked again with them at once."""
        self._helpers = list(helpers)
        if (rechecks := self._rechecks) is None:
            return
        for mapping in list(self._held.values()):
            if mapping.transport not in self._confirmed:
                rechecks.start_soon(self._verify, mapping)

    def use_records(self, records: RecordAuthority) -> None:
        """Publish confirmed mappings in `records` (a mesh's record) from now on."""
        self._records = records
        self._publish()

    def statistics(self) -> PortMapStatistics:
        return PortMapStatistics(self._protocol, tuple(self._held.values()),
                                 tuple(self._confirmed.values()), self._refuted,
                                 self._attempts, tuple(self._failures))

    def confirmed(self) -> list[Mapping]:
        """The mappings held now that a dial-back confirmed."""
        return list(self._confirmed.values())

    async def wait_changed(self) -> None:
        """Wait for the next change: a mapping granted, lost, confirmed or refuted."""
        await self._changed.wait()

    async def wait_confirmed(self, transport: str = "udp") -> Mapping:
        """Wait until a mapping of `transport` is confirmed (callers bound the wait)."""
        while True:
            changed = self._changed
            if transport in self._confirmed:
                return self._confirmed[transport]
            if self._node is None:
                raise NotMounted("mount PortMapper on a running MeshNode first")
            await changed.wait()

    # --- one round: find the gateway, map, keep, release -------------------------------------

    async def _map_once(self, node: MeshNode) -> None:
        """One round: probe, then each protocol the gateway speaks in order of preference
        until one grants a mapping; returns when that protocol holds none any more."""
        gateway = self.config.gateway or default_gateway()
        if gateway is None:
            raise PeerUnavailable("portmap: no IPv4 default gateway")
        client_ip = local_ip_towards(gateway)
        wanted = self.config.protocols
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind((str(client_ip), 0))
            probe = None
            if {MappingProtocol.PCP, MappingProtocol.NATPMP} & set(wanted):
                probe = await self._probe(sock, gateway, client_ip)
            candidates = [p for p, speaks in (
                (MappingProtocol.PCP, probe is not None and probe.pcp),
                (MappingProtocol.NATPMP, probe is not None and MappingProtocol.NATPMP in wanted
                 and not probe.natpmp_refused),
                (MappingProtocol.UPNP, MappingProtocol.UPNP in wanted)) if speaks]
            refusals = []
            for protocol in candidates:
                self._obtained = False
                if protocol is MappingProtocol.NATPMP and probe and probe.natpmp_ip is None:
                    probe = await self._probe(sock, gateway, client_ip, ask_pcp=False)
                    if probe.natpmp_ip is None:  # PCP answered first; NAT-PMP never did
                        refusals.append("nat-pmp: no answer from the gateway")
                        continue
                try:
                    with _libp2p.single_exception():
                        async with trio.open_nursery() as nursery:
                            if protocol is MappingProtocol.UPNP:
                                await self._upnp(node, nursery)
                            else:
                                assert probe is not None
                                sessions = [self._session(node, protocol, t, gateway,
                                                          client_ip, probe.natpmp_ip)
                                            for t in self.config.transports]
                                await self._drive(sock, sessions, nursery)
                except MeshNatError as exc:
                    refusals.append(str(exc)[:120])
                if self._obtained:
                    return
                refusals.append(f"{protocol}: no mapping granted")
        raise PeerUnavailable("portmap: " + ("; ".join(refusals) if candidates else
                                             "the gateway speaks none of the protocols asked"))

    async def _probe(self, sock: trio.socket.SocketType, gateway: IPv4Address,
                     client_ip: IPv4Address, *, ask_pcp: bool = True) -> GatewayProbe:
        wanted = self.config.protocols
        probe = GatewayProbe(gateway, client_ip, trio.current_time(), _rand.random,
                             ask_pcp=ask_pcp and MappingProtocol.PCP in wanted,
                             ask_natpmp=MappingProtocol.NATPMP in wanted)
        with trio.move_on_after(self.config.probe_timeout):
            while not probe.decided(trio.current_time()):
                for datagram in probe.pop_datagrams(trio.current_time()):
                    await send_to_gateway(sock, datagram, probe.gateway)
                timer = probe.get_timer(trio.current_time())
                with trio.move_on_at(timer if timer is not None else trio.current_time() + 1):
                    data, addr = await sock.recvfrom(pcp.MAX_MESSAGE + 1)
                    source = udp_source(addr)
                    if source is not None:
                        probe.receive(data, source)
        log.debug("portmap: probe of %s: pcp=%s nat-pmp=%s", gateway, probe.pcp, probe.natpmp_ip)
        return probe

    def _session(self, node: MeshNode, protocol: MappingProtocol, transport: str,
                 gateway: IPv4Address, client_ip: IPv4Address,
                 external_ip: IPv4Address | None) -> MappingSession:
        return MappingSession(protocol, transport, node.listen_endpoint(transport).port,
                              gateway=gateway, client_ip=client_ip,
                              lifetime=self.config.lifetime,
                              nonce=secrets.token_bytes(pcp.NONCE_SIZE), rand=_rand.random,
                              pick_port=_random_port, external_ip=external_ip,
                              max_conflicts=self.config.max_conflicts)

    async def _drive(self, sock: trio.socket.SocketType, sessions: list[MappingSession],
                     nursery: trio.Nursery) -> None:
        """Run the sessions until none holds or wants a mapping; release them on the way out."""
        self._protocol = sessions[0].protocol
        for session in sessions:
            session.start(trio.current_time())
        announcements = await announcement_socket(sessions[0].gateway)
        listening = trio.CancelScope()  # ends with the sessions
        if announcements is not None:
            nursery.start_soon(self._hear_announcements, announcements, sessions, nursery,
                               listening)
        try:
            await self._pump(sock, sessions, nursery)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.release_timeout):
                for session in sessions:
                    self._handle(session.release(trio.current_time()), nursery)
                await self._pump(sock, sessions, nursery)
            listening.cancel()

    async def _pump(self, sock: trio.socket.SocketType, sessions: list[MappingSession],
                    nursery: trio.Nursery) -> None:
        while not all(s.done for s in sessions):
            for session in sessions:
                self._handle(session.handle_timer(trio.current_time()), nursery)
                for datagram in session.pop_datagrams():
                    await send_to_gateway(sock, datagram, session.gateway)
            timers = [t for s in sessions if (t := s.get_timer()) is not None]
            if not timers:
                return
            with trio.move_on_at(min(timers)) as self._waiting:
                data, addr = await sock.recvfrom(pcp.MAX_MESSAGE + 1)
                source = udp_source(addr)
                for session in sessions:
                    if source is not None:
                        self._handle(session.receive(data, source, trio.current_time()),
                                     nursery)

    async def _hear_announcements(self, announcements: trio.socket.SocketType,
                                  sessions: list[MappingSession], nursery: trio.Nursery,
                                  listening: trio.CancelScope) -> None:
        """Feed the gateway's multicast announcements to the sessions (until `listening` is
        cancelled); wake the pump when one has something to send (a remap after a reboot)."""
        with listening, announcements:
            while True:
                data, addr = await announcements.recvfrom(pcp.MAX_MESSAGE + 1)
                source = udp_source(addr)
                for session in sessions:
                    if source is not None:
                        self._handle(session.announced(data, source, trio.current_time()),
                                     nursery)
                if self._waiting is not None:
                    self._waiting.cancel()

    # --- UPnP-IGD ----------------------------------------------------------------------------

    async def _upnp(self, node: MeshNode, nursery: trio.Nursery) -> None:
        client = UpnpClient(timeout=self.config.upnp_timeout)
        await client.discover()
        self._protocol = MappingProtocol.UPNP
        ports: dict[str, int] = {}
        try:
            for transport in self.config.transports:
                ports[transport] = await self._upnp_add(client, node, transport, nursery)
            while True:  # renew halfway to expiry, on the same external port
                await trio.sleep(self.config.lifetime / 2)
                for transport, external in ports.items():
                    await self._upnp_add(client, node, transport, nursery, external)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.release_timeout):
                for transport, external in ports.items():
                    try:
                        await client.delete(transport, external)
                    except MeshNatError as exc:
                        log.debug("portmap: UPnP delete failed: %s", exc)

    async def _upnp_add(self, client: UpnpClient, node: MeshNode, transport: str,
                        nursery: trio.Nursery, external: int | None = None) -> int:
        internal = node.listen_endpoint(transport).port
        port = external or internal
        for _ in range(self.config.max_conflicts + 1):
            try:
                endpoint = await client.add(transport, port, internal, self.config.lifetime,
                                            f"meshnat {transport}")
            except UpnpConflict:
                if external is not None:
                    raise
                port = _random_port()
                continue
            mapping = Mapping(MappingProtocol.UPNP, transport, internal, endpoint,
                              float(self.config.lifetime), trio.current_time())
            self._handle([Obtained(mapping, renewal=external is not None)], nursery)
            return port
        raise PeerUnavailable(f"portmap: UPnP: {self.config.max_conflicts + 1} ports taken")

    # --- events, verification, publication ---------------------------------------------------

    def _handle(self, events: list[MappingEvent], nursery: trio.Nursery) -> None:
        for event in events:
            log.info("portmap: %s", event)
            if self._on_event is not None:
                self._on_event(event)
            self._obtained = self._obtained or isinstance(event, Obtained)
            match event:
                case Obtained(mapping=mapping, renewal=True) if (
                        mapping.transport in self._confirmed):
                    self._held[mapping.transport] = self._confirmed[mapping.transport] = mapping
                case Obtained(mapping=mapping):
                    self._forget(mapping.transport)
                    self._held[mapping.transport] = mapping
                    nursery.start_soon(self._verify, mapping)
                case Lost(mapping=mapping):
                    self._forget(mapping.transport)
            self._changed.set()
            self._changed = trio.Event()

    async def _verify(self, mapping: Mapping) -> None:
        node = self._node
        if node is None:
            return
        verdict: bool | None = None
        with trio.move_on_after(self.config.verify_timeout):
            check = dial_back if mapping.transport == "udp" else self._dial_back_tcp
            for helper in self._helpers:
                verdict = await check(node, helper, mapping.external)
                if verdict is not None:
                    break
        if self._held.get(mapping.transport) != mapping:
            return  # lost or replaced meanwhile
        if verdict:
            self._confirmed[mapping.transport] = mapping
            log.info("portmap: %s mapping %s confirmed by a dial-back", mapping.protocol,
                     mapping.external)
        else:
            self._refuted += verdict is False
            log.info("portmap: %s mapping %s not confirmed (%s)", mapping.protocol,
                     mapping.external, "no dial-back arrived" if verdict is False
                     else "no helper answered")
        self._publish()
        self._changed.set()
        self._changed = trio.Event()

    async def _dial_back_tcp(self, node: MeshNode, helper: PeerInfo, target: Endpoint
                             ) -> bool | None:
        """Whether `helper` reached this node at `target` (TCP): None if it would not."""
        try:
            proved = await self._dialback.dial_back(helper, ports={"tcp": target.port},
                                                    ip=target.ip)
        except MeshNatError as exc:
            log.debug("portmap: no TCP dial-back from %s: %s", helper.peer_id, exc)
            return None
        return "tcp" in proved

    def _forget(self, transport: str) -> None:
        self._held.pop(transport, None)
        if self._confirmed.pop(transport, None) is not None:
            self._publish()

    def _forget_all(self) -> None:
        for transport in list(self._held):
            self._forget(transport)
        self._protocol = None

    def _publish(self) -> None:
        if self._records is None:
            return
        addrs = [endpoint_addr(m.transport, str(m.external.ip), m.external.port)
                 for m in self._confirmed.values()]
        try:
            self._records.set_mapped_addrs(addrs)
        except NotMounted:
            log.debug("portmap: the record authority is not mounted")

