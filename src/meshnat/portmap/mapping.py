"""What a port mapping is, and what a mapping session reports about it (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meshnat.endpoint import Endpoint


class MappingProtocol(StrEnum):
    """How a mapping was asked for, in the order a PortMapper prefers them."""

    PCP = "pcp"
    NATPMP = "nat-pmp"
    UPNP = "upnp"


@dataclass(frozen=True, slots=True)
class Mapping:
    """An external endpoint the gateway forwards to `internal_port`, until `expires_at`."""

    protocol: MappingProtocol
    transport: str
    """"udp" or "tcp"."""
    internal_port: int
    external: Endpoint
    lifetime: float
    """Seconds the gateway granted."""
    obtained_at: float

    @property
    def renew_at(self) -> float:
        """Halfway to expiry (RFC 6886 §3.3, RFC 6887 §11.2.1)."""
        return self.obtained_at + self.lifetime / 2

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.lifetime


@dataclass(frozen=True, slots=True)
class Obtained:
    """The gateway granted (`renewal`: extended) a mapping."""

    mapping: Mapping
    renewal: bool = False


@dataclass(frozen=True, slots=True)
class Lost:
    """A mapping no longer holds: `reason` is "expired" or "gateway-rebooted"; after a
    reboot the session asks for it again by itself."""

    mapping: Mapping
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """No mapping: the gateway refused (`code`, its result code's name) or never answered
    (`code` None). `retry_after` is the gateway's advice in seconds, if it gave one."""

    reason: str
    code: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """The mapping was deleted (or there was none to delete)."""


MappingEvent = Obtained | Lost | Failed | Released
