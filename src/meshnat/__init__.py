"""meshnat: NAT traversal for libp2p meshes, with no external STUN server.

The mesh reflects addresses (`ReflectionService`), votes on them (`PeerAddressDiscovery`),
classifies NATs (`NatClassifier`), punches holes (`HolePuncher`), relays (`RelayService`,
`RelayClient`), puts it together in one call (`Connector`), carries TCP services over it
(`TunnelService`), publishes signed address records (`RecordAuthority`), finds peers by
network name (`RendezvousService`) and chats (`ChatService`, `ChatNetwork`). Every capability is
a service mounted on a `MeshNode`; `MeshNode.connections(peer)` says which connection reaches a
peer and by what path (`Connection`, `PathKind`).
"""

import logging

from meshnat._libp2p import Connection
from meshnat.chat import ChatConfig, ChatNetwork, ChatNetworkConfig, ChatService
from meshnat.classify import (
    ClassifierConfig,
    NatClassifier,
    NatReport,
    NatType,
    ProbeHelperConfig,
    ProbeHelperService,
)
from meshnat.connect import ConnectConfig, Connector, Path
from meshnat.discovery import Consensus, DiscoveryConfig, PeerAddressDiscovery
from meshnat.echo import EchoService
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ConfigError,
    ForgedRecord,
    InsufficientResponses,
    InvalidRecord,
    ListenerMissing,
    LocalProtocolError,
    MeshNatError,
    NoConsensus,
    PairExpired,
    PairTaken,
    PeerTimeout,
    PeerUnavailable,
    PortInUse,
    ProtocolError,
    PunchFailed,
    RelayUnavailable,
    RemoteProtocolError,
    StaleRecord,
    TraversalError,
    TunnelRefused,
    UnknownPair,
)
from meshnat.events import TunnelClosed
from meshnat.node import MeshNode, NodeConfig, Service
from meshnat.paths import PathKind
from meshnat.punch import HolePuncher, PunchConfig, Punched
from meshnat.records import (
    AddressRecord,
    NatSummary,
    RecordAuthority,
    RecordConfig,
    RecordStore,
    SignedRecord,
    sign_record,
    verify_record,
)
from meshnat.reflection import ReflectionConfig, ReflectionService
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.rendezvous import (
    RendezvousClient,
    RendezvousClientConfig,
    RendezvousConfig,
    RendezvousService,
)
from meshnat.traversal import PairState, PortPair, Traversal, TraversalConfig, TraversalService
from meshnat.tunnel import ANY_PEER, RefusalCode, Tunnel, TunnelConfig, TunnelService

__version__ = "0.1.0"

logging.getLogger("meshnat").addHandler(logging.NullHandler())

__all__ = [
    "ANY_PEER",
    "AddressRecord",
    "ChatConfig",
    "ChatNetwork",
    "ChatNetworkConfig",
    "ChatService",
    "ClassifierConfig",
    "ConfigError",
    "ConnectConfig",
    "Connection",
    "Connector",
    "Consensus",
    "DiscoveryConfig",
    "EchoService",
    "Endpoint",
    "ForgedRecord",
    "HolePuncher",
    "InsufficientResponses",
    "InvalidRecord",
    "ListenerMissing",
    "LocalProtocolError",
    "MeshNatError",
    "MeshNode",
    "NatClassifier",
    "NatReport",
    "NatSummary",
    "NatType",
    "NoConsensus",
    "NodeConfig",
    "PairExpired",
    "PairState",
    "PairTaken",
    "Path",
    "PathKind",
    "PeerAddressDiscovery",
    "PeerTimeout",
    "PeerUnavailable",
    "PortInUse",
    "PortPair",
    "ProbeHelperConfig",
    "ProbeHelperService",
    "ProtocolError",
    "PunchConfig",
    "PunchFailed",
    "Punched",
    "RecordAuthority",
    "RecordConfig",
    "RecordStore",
    "ReflectionConfig",
    "ReflectionService",
    "RefusalCode",
    "RelayClient",
    "RelayService",
    "RelayServiceConfig",
    "RelayUnavailable",
    "RemoteProtocolError",
    "RendezvousClient",
    "RendezvousClientConfig",
    "RendezvousConfig",
    "RendezvousService",
    "Service",
    "SignedRecord",
    "StaleRecord",
    "Traversal",
    "TraversalConfig",
    "TraversalError",
    "TraversalService",
    "Tunnel",
    "TunnelClosed",
    "TunnelConfig",
    "TunnelRefused",
    "TunnelService",
    "UnknownPair",
    "__version__",
    "sign_record",
    "verify_record",
]
