"""`PortMapConfig`: which protocols a PortMapper uses and how long it waits (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from meshnat.config import require_in_range, require_positive
from meshnat.errors import ConfigError
from meshnat.portmap.mapping import MappingProtocol

TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMapConfig:
    """How a PortMapper asks the gateway for mappings."""

    protocols: tuple[MappingProtocol, ...] = (MappingProtocol.PCP, MappingProtocol.NATPMP,
                                              MappingProtocol.UPNP)
    """Protocols tried, in order of preference (PCP and NAT-PMP are probed at once)."""

    transports: tuple[str, ...] = TRANSPORTS
    """Listen ports mapped: "udp" (QUIC, punching, reflection) and "tcp"."""

    lifetime: int = 7200
    """Seconds of mapping asked for (RFC 6886 §3.3's recommendation); renewed halfway."""

    probe_timeout: float = 2.0
    """Seconds for the gateway to answer a PCP ANNOUNCE or NAT-PMP address request."""

    upnp_timeout: float = 3.0
    """Seconds for each UPnP-IGD call (SSDP discovery, AddPortMapping, DeletePortMapping)."""

    retry_interval: float = 60.0
    """Seconds before trying again after no gateway, a refusal, or a lost mapping."""

    release_timeout: float = 1.0
    """Seconds spent deleting mappings when the mapper stops."""

    verify_timeout: float = 5.0
    """Seconds for the dial-back that must confirm a mapping before it is advertised."""

    max_conflicts: int = 4
    """External ports tried after the first one was taken."""

    gateway: IPv4Address | None = None
    """The gateway to ask; None: the default route's."""

    def __post_init__(self) -> None:
        if not self.protocols or not set(self.protocols) <= set(MappingProtocol):
            raise ConfigError("protocols must name at least one of pcp, nat-pmp, upnp")
        if not self.transports or not set(self.transports) <= set(TRANSPORTS):
            raise ConfigError("transports must be a non-empty subset of udp, tcp")
        require_in_range(self, 120, 86_400, "lifetime")
        require_in_range(self, 0, 64, "max_conflicts")
        require_positive(self, "probe_timeout", "upnp_timeout", "retry_interval",
                         "release_timeout", "verify_timeout")
