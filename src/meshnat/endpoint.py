"""`Endpoint`: an IP address and port as seen on the network, with its wire and multiaddr forms,
and `udp_source`, the one rule for which datagram sources are possible at all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from itertools import chain, zip_longest
from typing import Self

from meshnat.errors import ConfigError, MalformedMessage
from meshnat.wire.codec import describe

_BROADCAST = b"\xff" * 4
_UNSPECIFIED_V6 = bytes(16)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and a port; hashable so it can be tallied.

    Totally ordered across address families, by (IP version, packed address, port): IPv4
    before IPv6, so any mix sorts deterministically (ipaddress itself refuses to compare an
    IPv4Address with an IPv6Address).
    """

    ip: IPv4Address | IPv6Address
    port: int

    def __post_init__(self) -> None:
        if type(self.port) is not int or not 0 < self.port < 65536:
            raise ConfigError(f"port out of range: {describe(self.port)}")

    def sort_key(self) -> tuple[int, bytes, int]:
        return (self.ip.version, self.ip.packed, self.port)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self.sort_key() >= other.sort_key()

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
        # never the value: its repr can be far larger than the frame (or raise, for a huge int)
        raise MalformedMessage(
            f"endpoint must be [ip bytes (4 or 16), port 1-65535], got {describe(value)}")

    def observer_group(self) -> str:
        """The network an observer counts for: its IPv4 address, or its IPv6 /56."""
        if self.ip.version == 4:
            return str(self.ip)
        return str(ip_network(f"{self.ip}/56", strict=False))


def udp_source(addr: object) -> Endpoint | None:
    """The endpoint a datagram came from, or None when no real host can send from there.

    Impossible sources: port 0, an unspecified address (0.0.0.0/8, "this network" in RFC 1122
    3.2.1.3, and ::), a multicast address (224.0.0.0/4, ff00::/8),
    the IPv4 limited broadcast address, or anything that is not an (ip, port) socket address.
    A datagram from one is forged or broken; callers drop it and count it, before any
    protocol sees it (answering would aim traffic at nobody, or at a whole network).
    """
    if type(addr) is not tuple or len(addr) < 2:
        return None
    host, port = addr[0], addr[1]
    if type(host) is not str or type(port) is not int or not 0 < port < 65536:
        return None
    try:
        ip = ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    packed = ip.packed
    if ip.version == 4:  # 0.0.0.0/8, 224.0.0.0/4 multicast, 255.255.255.255
        if packed[0] == 0 or packed[0] >> 4 == 14 or packed == _BROADCAST:
            return None
    elif packed[0] == 0xFF or packed == _UNSPECIFIED_V6:  # ff00::/8 multicast, ::
        return None
    return Endpoint(ip, port)


def interleave_families(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """`endpoints` with the families alternating, IPv6 first (RFC 8305 §4, happy eyeballs:
    prefer IPv6, but never let a run of one family hold up the other); the order within a
    family is kept."""
    items = list(endpoints)
    v6 = [e for e in items if e.ip.version == 6]
    v4 = [e for e in items if e.ip.version == 4]
    return [e for e in chain.from_iterable(zip_longest(v6, v4)) if e is not None]
