"""Router port mapping: PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP-IGD (miniupnpc)."""

from meshnat.portmap.config import PortMapConfig
from meshnat.portmap.mapping import (
    Failed,
    Lost,
    Mapping,
    MappingEvent,
    MappingProtocol,
    Obtained,
    Released,
)
from meshnat.portmap.service import PortMapper, PortMapStatistics

__all__ = [
    "Failed",
    "Lost",
    "Mapping",
    "MappingEvent",
    "MappingProtocol",
    "Obtained",
    "PortMapConfig",
    "PortMapStatistics",
    "PortMapper",
    "Released",
]
