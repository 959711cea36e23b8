"""The services a `Mesh` builds and mounts on its node, wired to each other."""

from __future__ import annotations

from collections.abc import Callable

from meshnat._libp2p.dht import MeshDHT
from meshnat.classify import NatClassifier
from meshnat.connect import Connector
from meshnat.discovery import DiscoveryConfig, PeerAddressDiscovery
from meshnat.events import EventSink
from meshnat.mesh import view
from meshnat.mesh.config import MeshConfig
from meshnat.mesh.dialback import DIALBACK_PROTOCOL, DialBackService
from meshnat.mesh.offers import Offers
from meshnat.node import MeshNode, Service
from meshnat.punch import HolePuncher
from meshnat.records import RecordAuthority, RecordConfig
from meshnat.relay import RelayClient


class MeshParts:
    """The DHT (members are peers that speak dial-back), address discovery (reflectors set by
    the mesh), the signed record, relay client, puncher, connector, classifier and the public
    offers, for one node."""

    def __init__(self, node: MeshNode, config: MeshConfig, *,
                 on_discovery: Callable[[], None], events: EventSink) -> None:
        self.dht = MeshDHT(node.host,
                           is_member=lambda p: view.speaks(node, p, DIALBACK_PROTOCOL))
        self.discovery = PeerAddressDiscovery([], DiscoveryConfig(
            min_responses=1, interval=config.discovery_interval),
            events=lambda _: on_discovery())
        self.authority = RecordAuthority(
            RecordConfig(ttl=config.record_ttl, publish_local=config.publish_local),
            discovery=self.discovery)
        self.relay = RelayClient()
        self.puncher = HolePuncher(discovery=self.discovery)
        self.offers = Offers(node, self.dht, relay=config.offer_relay)
        self.dialback = DialBackService()
        self.connector = Connector(relay_client=self.relay, puncher=self.puncher, events=events)
        self.classifier = NatClassifier([])

    def services(self) -> list[Service]:
        """What to mount, in order (the DHT runs on its own: `MeshDHT.run`)."""
        return [self.dialback, self.discovery, self.authority, self.relay, self.puncher,
                self.connector, self.classifier]
