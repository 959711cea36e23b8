"""`Endpoint`: an IP address and port as seen on the network, with its wire and multiaddr forms."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Self

from meshnat.errors import ConfigError, MalformedMessage


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An IP address and a port; hashable so it can be tallied, ordered for stable output."""

    ip: IPv4Address | IPv6Address
    port: int

    def __post_init__(self) -> None:
        if type(self.port) is not int or not 0 < self.port < 65536:
            raise ConfigError(f"port out of range: {self.port!r}")

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse `1.2.3.4:5` or `[::1]:5`; raises ConfigError on anything else."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"expected ip:port, got {text!r}")
        try:
            return cls(ip_address(host.strip("[]")), int(port))
        except ValueError as exc:
            raise ConfigError(f"expected ip:port, got {text!r}") from exc

    @classmethod
    def from_sockaddr(cls, addr: tuple[str, int] | tuple[str, int, int, int]) -> Self:
        """Build from a socket address tuple (IPv4 or IPv6); IPv4-mapped IPv6 is unwrapped."""
        ip = ip_address(addr[0].split("%", 1)[0])
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return cls(ip, int(addr[1]))

    def to_sockaddr(self) -> tuple[str, int]:
        return (str(self.ip), self.port)

    def to_wire(self) -> list[object]:
        return [self.ip.packed, self.port]

    @classmethod
    def from_wire(cls, value: object) -> Self:
        """Decode `[ip bytes (4 or 16), port]`; raises MalformedMessage otherwise."""
        match value:
            case [bytes() as raw, int() as port] if (
                len(raw) in (4, 16) and type(port) is int and 0 < port < 65536
            ):
                return cls(ip_address(raw), port)
        raise MalformedMessage(f"endpoint must be [ip bytes, port], got {value!r:.60}")

    def observer_group(self) -> str:
        """The network an observer counts for: its IPv4 address, or its IPv6 /56."""
        if self.ip.version == 4:
            return str(self.ip)
        return str(ip_network(f"{self.ip}/56", strict=False))
