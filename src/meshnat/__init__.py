"""meshnat: NAT traversal for libp2p meshes, with no external STUN server.

The mesh reflects addresses (`ReflectionService`), votes on them (`PeerAddressDiscovery`),
classifies NATs (`NatClassifier`), punches holes (`HolePuncher`), relays (`RelayService`,
`RelayClient`), puts it together in one call (`Connector`) and carries TCP services over it
(`TunnelService`). Every capability is a service mounted on a `MeshNode`.
"""

import logging

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
    InsufficientResponses,
    LocalProtocolError,
    MeshNatError,
    NoConsensus,
    PeerTimeout,
    PeerUnavailable,
    ProtocolError,
    PunchFailed,
    RelayUnavailable,
    RemoteProtocolError,
    TunnelRefused,
)
from meshnat.events import TunnelClosed
from meshnat.node import MeshNode, NodeConfig, Service
from meshnat.punch import HolePuncher, PunchConfig, Punched
from meshnat.reflection import ReflectionConfig, ReflectionService
from meshnat.relay import RelayClient, RelayService, RelayServiceConfig
from meshnat.tunnel import ANY_PEER, RefusalCode, Tunnel, TunnelConfig, TunnelService

__version__ = "0.1.0"

logging.getLogger("meshnat").addHandler(logging.NullHandler())

__all__ = [
    "ANY_PEER",
    "ClassifierConfig",
    "ConfigError",
    "ConnectConfig",
    "Connector",
    "Consensus",
    "DiscoveryConfig",
    "EchoService",
    "Endpoint",
    "HolePuncher",
    "InsufficientResponses",
    "LocalProtocolError",
    "MeshNatError",
    "MeshNode",
    "NatClassifier",
    "NatReport",
    "NatType",
    "NoConsensus",
    "NodeConfig",
    "Path",
    "PeerAddressDiscovery",
    "PeerTimeout",
    "PeerUnavailable",
    "ProbeHelperConfig",
    "ProbeHelperService",
    "ProtocolError",
    "PunchConfig",
    "PunchFailed",
    "Punched",
    "ReflectionConfig",
    "ReflectionService",
    "RefusalCode",
    "RelayClient",
    "RelayService",
    "RelayServiceConfig",
    "RelayUnavailable",
    "RemoteProtocolError",
    "Service",
    "Tunnel",
    "TunnelClosed",
    "TunnelConfig",
    "TunnelRefused",
    "TunnelService",
    "__version__",
]
