"""meshnat: NAT traversal for libp2p meshes, with no external STUN server.

The mesh reflects addresses (`ReflectionService`), votes on them (`PeerAddressDiscovery`),
and later classifies NATs, punches holes and relays. Every capability is a service mounted
on a `MeshNode`.
"""

import logging

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
    RemoteProtocolError,
)
from meshnat.node import MeshNode, NodeConfig, Service

__version__ = "0.1.0"

logging.getLogger("meshnat").addHandler(logging.NullHandler())

__all__ = [
    "ConfigError",
    "EchoService",
    "Endpoint",
    "InsufficientResponses",
    "LocalProtocolError",
    "MeshNatError",
    "MeshNode",
    "NoConsensus",
    "NodeConfig",
    "PeerTimeout",
    "PeerUnavailable",
    "ProtocolError",
    "RemoteProtocolError",
    "Service",
    "__version__",
]
