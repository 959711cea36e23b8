"""`Mesh`: a node that joins from bootstrap addresses and organizes itself from then on.

It connects to the bootstrap nodes, learns members through the DHT, asks peers to dial it back
(`dialback`), serves others once confirmed public (`offers`), picks its reflectors among
confirmed-public peers (`reflectors`), reserves on relays while behind NAT (`autorelay`) and
publishes its signed record in the DHT (`publishing`). Each decision is a pure core; this is
the trio adapter that feeds them what the host sees and carries out what they say.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, PeerInfo, TaskStatus
from meshnat._libp2p.dht import MeshDHT
from meshnat._libp2p.relay import HOP_PROTOCOL
from meshnat.connect import Path
from meshnat.discovery import PeerAddressDiscovery
from meshnat.errors import MeshNatError, NotMounted, PeerUnavailable, RelayUnavailable
from meshnat.events import MeshEvent, PathUpgraded
from meshnat.mesh import view
from meshnat.mesh.autorelay import AutoRelay, RelayOption
from meshnat.mesh.config import MeshConfig
from meshnat.mesh.events import MeshChanged, MeshSink, ignore_mesh_events
from meshnat.mesh.parts import MeshParts
from meshnat.mesh.peers import Membership
from meshnat.mesh.publishing import Republisher
from meshnat.mesh.reachability import Reachability, ReachabilityTracker
from meshnat.mesh.reflectors import choose_reflectors
from meshnat.node import MeshNode, Service
from meshnat.paths import PathKind
from meshnat.records import AddressRecord, NatSummary, RecordAuthority
from meshnat.reflection.service import REFLECT_PROTOCOL

log = logging.getLogger(__name__)


class Mesh:
    """Mounted by MeshNode when its config has bootstrap addresses (or a MeshConfig)."""

    def __init__(self, config: MeshConfig | None = None, *, bootstrap: Sequence[PeerInfo] = (),
                 events: MeshSink = ignore_mesh_events) -> None:
        self.config = config or MeshConfig()
        self.bootstrap = list(bootstrap)
        self.events = events
        """Where MeshChanged events go (the CLI's `up` prints them)."""
        cfg = self.config
        self.reachability = ReachabilityTracker(
            confirmations=cfg.dialback_confirmations, refutations=cfg.dialback_refutations,
            ttl=cfg.dialback_ttl, forced=cfg.reachability)
        self.membership = Membership(target=cfg.target_peers)
        self.autorelay = AutoRelay(count=cfg.relays, refusal_backoff=cfg.relay_refusal_backoff,
                                   failure_backoff=cfg.relay_failure_backoff)
        self._republisher = Republisher(interval=cfg.republish_interval)
        self.reflectors: list[str] = []
        self.relay_addrs: dict[str, str] = {}
        self._status = Reachability.UNKNOWN
        self._rtt: dict[str, float] = {}
        self._busy: set[tuple[str, str]] = set()
        self._classify_due = False
        self._wake = trio.Event()
        self._reconciled = trio.Event()
        self._published = trio.Event()
        self._node: MeshNode | None = None
        self._parts: MeshParts | None = None

    # --- public API --------------------------------------------------------------------------

    @property
    def status(self) -> Reachability:
        return self._status

    @property
    def dht(self) -> MeshDHT:
        return self._mounted()[1].dht

    @property
    def authority(self) -> RecordAuthority:
        return self._mounted()[1].authority

    @property
    def discovery(self) -> PeerAddressDiscovery:
        return self._mounted()[1].discovery

    async def wait_published(self) -> None:
        """Wait until this node's record (with an address to reach it) is in the DHT."""
        await self._published.wait()

    async def wait_reconciled(self) -> None:
        """Wait until the node has next looked at the mesh and acted on what it saw."""
        await self._reconciled.wait()

    async def lookup(self, peer: ID) -> AddressRecord:
        """`peer`'s verified record from the DHT; PeerUnavailable if none verifies after
        `MeshConfig.lookup_attempts` walks (a walk whose queries all failed, as py-libp2p's
        streams do under load, finds nothing; each walk is bounded by LOOKUP_TIMEOUT)."""
        for attempt in range(self.config.lookup_attempts):
            record = await self.dht.lookup(peer)
            if record is not None:
                return record
            log.info("mesh: lookup %d of %d found no valid record of %s", attempt + 1,
                     self.config.lookup_attempts, peer)
        raise PeerUnavailable(f"no valid record of {peer} in the mesh")

    async def connect(self, peer: ID) -> Path:
        """Reach `peer` by its id alone: an existing connection, else its record from the DHT,
        then direct, relayed (punched in the background)."""
        node, parts = self._mounted()
        if node.connections(peer):
            try:
                return await parts.connector.connect(_libp2p.peer_by_id(peer))
            except PeerUnavailable:  # it closed meanwhile: dial the record's addresses
                log.debug("mesh: the connection to %s closed; looking it up", peer)
        record = await self.lookup(peer)
        relays = _libp2p.merge_peer_addrs([str(a).split("/p2p-circuit")[0]
                                           for a in record.relay_addrs()])
        try:
            return await parts.connector.connect(PeerInfo(peer, record.direct_addrs()))
        except PeerUnavailable:
            if not relays:
                raise
        return await parts.connector.connect_via(peer, relays)

    async def connect_via(self, peer: ID, relays: Sequence[PeerInfo]) -> Path:
        """A relay circuit to `peer` through the first of `relays` that gives one."""
        return await self._mounted()[1].connector.connect_via(peer, relays)

    def to_json(self) -> dict[str, object]:
        """Reachability, addresses, reflectors, relays, DHT peers, and each connected peer's
        open connections (`paths`: kind/transport, best first), now."""
        node, parts = self._mounted()
        latest = {t: parts.discovery.latest(t) for t in ("udp", "tcp")}
        peers = node.host.get_connected_peers()
        return {"peer_id": str(node.peer_id), "reachability": str(self._status),
                "addresses": {t: c.to_json() for t, c in latest.items() if c is not None},
                "reflectors": list(self.reflectors), "relays": list(self.relay_addrs.values()),
                "dht_server": parts.dht.server, "dht_peers": len(parts.dht.routing_peers()),
                "connected": len(peers),
                "paths": {str(p): [f"{c.kind}/{c.transport}" for c in node.connections(p)]
                          for p in peers}}

    # --- lifecycle ---------------------------------------------------------------------------

    def _mounted(self) -> tuple[MeshNode, MeshParts]:
        if self._node is None or self._parts is None:
            raise NotMounted("the mesh is not running")
        return self._node, self._parts

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        mounted: list[Service] = []

        async def mount(service: Service) -> Service:
            mounted.append(await node.mount(service))
            return service

        # the wake-up event is replaced at every look: fetched when called
        parts = MeshParts(node, self.config, on_discovery=lambda: self._wake.set(),
                          events=self._path_event)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(parts.dht.run)
                for service in parts.services():
                    await mount(service)
                self._node, self._parts = node, parts
                task_status.started()
                with _libp2p.watch_connections(node.host, lambda _: self._wake.set()):
                    nursery.start_soon(self._refresh_loop, parts.dht)
                    nursery.start_soon(self._publish_loop, node, parts)
                    await self._reconcile_loop(node, parts, nursery)
        finally:
            self._node = self._parts = None
            # shielded but bounded: the node may be tearing down the services itself
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5.0):
                await parts.offers.withdraw()
                for service in reversed(mounted):
                    with contextlib.suppress(MeshNatError):
                        await node.unmount(service)

    def _path_event(self, event: MeshEvent) -> None:
        """A relayed peer now reached directly (its punch worked): told as `path-upgraded`."""
        if isinstance(event, PathUpgraded):
            self.events(MeshChanged("path-upgraded", {
                "peer": event.peer, "path": str(PathKind.PUNCHED),
                "transport": event.transport, "remote": str(event.remote)}))

    # --- the loops ---------------------------------------------------------------------------

    async def _reconcile_loop(self, node: MeshNode, parts: MeshParts,
                              nursery: trio.Nursery) -> None:
        while True:
            with trio.move_on_after(self.config.tick):
                await self._wake.wait()
            self._wake = trio.Event()
            await self._reconcile(node, parts, nursery, trio.current_time())
            self._reconciled.set()
            self._reconciled = trio.Event()

    async def _reconcile(self, node: MeshNode, parts: MeshParts, nursery: trio.Nursery,
                         now: float) -> None:
        parts.authority.update()  # a newly confirmed address is signed at once
        members = view.members(node)
        parts.dht.prune()
        for peer in members:
            await parts.dht.add_peer(ID.from_base58(peer))
        known = view.known(node, parts.dht, self.bootstrap)
        by_name = {str(p): v for p, v in known.items()}
        for peer in self.membership.to_dial({k: v[0] for k, v in by_name.items()},
                                            set(members), now):
            self._spawn(nursery, "dial", peer, self._dial, node, by_name[peer][1])
        for peer in self.reachability.to_ask(members, now):
            self._spawn(nursery, "dialback", peer, self._ask_dial_back, node, parts,
                        ID.from_base58(peer), members[peer])
        status = self.reachability.status(now)
        if status != self._status:
            self._status = status
            await parts.offers.offer(status is Reachability.PUBLIC)
            parts.authority.set_services(parts.offers.names())
            self.events(MeshChanged("reachability", {"reachability": str(status)}))
        public = {p: n for p, n in members.items()
                  if parts.dht.is_server_member(ID.from_base58(p))}
        self._choose_reflectors(node, parts, nursery,
                                {p: n for p, n in public.items()
                                 if view.speaks(node, ID.from_base58(p), REFLECT_PROTOCOL)})
        self._keep_relays(node, parts, nursery, now,
                          {p: n for p, n in public.items()
                           if view.speaks(node, ID.from_base58(p), HOP_PROTOCOL)})

    def _spawn(self, nursery: trio.Nursery, kind: str, peer: str, fn: object,
               *args: object) -> bool:
        """Run one task per (kind, peer) at a time; False if one was running already."""
        key = (kind, peer)
        if key in self._busy:
            return False
        self._busy.add(key)

        async def run() -> None:
            try:
                await fn(*args)  # type: ignore[operator]
            finally:
                self._busy.discard(key)
                self._wake.set()

        nursery.start_soon(run)
        return True

    async def _dial(self, node: MeshNode, peer: PeerInfo) -> None:
        started = trio.current_time()
        try:
            await node.connect(_libp2p.tcp_first(peer))
        except MeshNatError as exc:
            log.debug("mesh: could not dial %s: %s", peer.peer_id, exc)
            self.membership.dialled(str(peer.peer_id), False, trio.current_time())
            return
        self._rtt.setdefault(str(peer.peer_id), trio.current_time() - started)
        self.membership.dialled(str(peer.peer_id), True, trio.current_time())

    async def _ask_dial_back(self, node: MeshNode, parts: MeshParts, peer: ID,
                             network: str) -> None:
        try:
            witnessed = await parts.dialback.dial_back(
                PeerInfo(peer, view.seen_addrs(node, peer)))
        except MeshNatError as exc:
            log.debug("mesh: no dial-back from %s: %s", peer, exc)
            return
        self.reachability.record(network, bool(witnessed), trio.current_time())

    def _choose_reflectors(self, node: MeshNode, parts: MeshParts, nursery: trio.Nursery,
                           candidates: dict[str, str]) -> None:
        ranked = dict(sorted(candidates.items(), key=lambda kv: self._rtt.get(kv[0], 1.0)))
        chosen = choose_reflectors(self.reflectors, ranked, count=self.config.reflectors)
        if chosen == self.reflectors:
            return
        self.reflectors = chosen
        infos = [PeerInfo(ID.from_base58(p), view.seen_addrs(node, ID.from_base58(p)))
                 for p in chosen]
        parts.discovery.reflectors = infos
        parts.discovery.config = replace(parts.discovery.config,
                                         min_responses=max(1, min(3, len(infos))))
        parts.discovery.network_changed()
        parts.classifier.reflectors = infos
        if node.port_mapper is not None and not node.config.port_mapping_helpers:
            node.port_mapper.use_helpers(infos)  # confirmed-public, probe helpers mounted
        if self.config.classify and len(infos) >= 2:
            self._classify_due = True  # a classification under way runs again after
            self._spawn(nursery, "classify", "", self._classify, parts)
        self.events(MeshChanged("reflectors", {"reflectors": chosen}))

    async def _classify(self, parts: MeshParts) -> None:
        """Classify with the reflectors in use, and again while they changed meanwhile (the
        first run, with two reflectors, may not tell a symmetric NAT)."""
        while self._classify_due:
            self._classify_due = False
            try:
                report = await parts.classifier.classify()
            except MeshNatError as exc:
                log.info("mesh: classification failed: %s", exc)
                continue
            parts.authority.set_nat(NatSummary.from_report(report))
            self.events(MeshChanged("nat-report", report.to_json()))

    def _keep_relays(self, node: MeshNode, parts: MeshParts, nursery: trio.Nursery, now: float,
                     candidates: dict[str, str]) -> None:
        if self._status is not Reachability.PRIVATE:
            candidates = {}
        options = [RelayOption(p, n, self._rtt.get(p, 1.0)) for p, n in candidates.items()]
        dropped = self.autorelay.to_drop(options)
        for peer in dropped:
            self.relay_addrs.pop(peer, None)
        if dropped:
            self._relays_changed(parts)
        for option in self.autorelay.to_reserve(options, now):
            if not self._spawn(nursery, "reserve", option.peer, self._reserve, node, parts,
                               option):
                self.autorelay.abandoned(option.peer)

    async def _reserve(self, node: MeshNode, parts: MeshParts, option: RelayOption) -> None:
        relay = ID.from_base58(option.peer)
        info = PeerInfo(relay, view.seen_addrs(node, relay))
        try:
            addr = await parts.relay.reserve(info)
        except RelayUnavailable as exc:
            log.info("mesh: relay %s refused: %s", relay, exc)
            self.autorelay.refused(option.peer, trio.current_time())
            return
        except MeshNatError as exc:
            log.info("mesh: reservation on %s failed: %s", relay, exc)
            self.autorelay.failed(option.peer, trio.current_time())
            return
        finally:
            self.autorelay.abandoned(option.peer)  # settled above unless cancelled
        self.autorelay.reserved(option)
        self.relay_addrs[option.peer] = str(addr)
        self._relays_changed(parts)

    def _relays_changed(self, parts: MeshParts) -> None:
        addrs = [self.relay_addrs[p] for p in self.autorelay.held if p in self.relay_addrs]
        parts.authority.set_relay_addrs([_libp2p.parse_multiaddr(a) for a in addrs])
        self.events(MeshChanged("relays", {"relays": addrs}))

    async def _refresh_loop(self, dht: MeshDHT) -> None:
        """Refresh the DHT once it has a member, again soon after, then periodically."""
        while not dht.routing_peers():
            await self._joined_or_tick()
        await dht.refresh()
        await trio.sleep(self.config.refresh_soon)
        while True:
            size = await dht.refresh()
            self.events(MeshChanged("peers", {"dht_peers": size}))
            await trio.sleep(self.config.refresh_interval)

    async def _joined_or_tick(self) -> None:
        with trio.move_on_after(self.config.tick):
            await self._wake.wait()

    async def _publish_loop(self, node: MeshNode, parts: MeshParts) -> None:
        """Publish the record whenever it changes, and again before copies expire."""
        while True:
            current = parts.authority.current()
            now = trio.current_time()
            if current.record.addrs and parts.dht.routing_peers() and \
                    self._republisher.due(current.record.seq, now):
                stored = await parts.dht.publish(current.data, node.peer_id)
                self._republisher.published(current.record.seq, trio.current_time(),
                                            stored=stored)
                if stored:
                    self._published.set()
                    self.events(MeshChanged("published", {
                        "seq": current.record.seq, "at": time.time(),
                        "addrs": [str(a) for a in current.record.addrs]}))
            with trio.move_on_after(self.config.tick):
                await parts.authority.wait_newer(current.record.seq)

