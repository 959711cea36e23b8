"""Where the default gateway is: the IPv4 default route of /proc/net/route (pure parser)."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

ROUTE_TABLE = Path("/proc/net/route")
_RTF_GATEWAY = 0x2


def parse_default_gateway(table: str) -> IPv4Address | None:
    """The gateway of the first IPv4 default route in a /proc/net/route text (addresses are
    little-endian hex); None if there is none."""
    for line in table.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4:
            continue
        try:
            destination, gateway, flags = int(cols[1], 16), int(cols[2], 16), int(cols[3], 16)
        except ValueError:
            continue
        if destination == 0 and flags & _RTF_GATEWAY and gateway:
            return IPv4Address(gateway.to_bytes(4, "little"))
    return None


def default_gateway(table: Path = ROUTE_TABLE) -> IPv4Address | None:
    """This host's IPv4 default gateway (Linux), None if it has none or the table is absent."""
    try:
        return parse_default_gateway(table.read_text())
    except OSError:
        return None
