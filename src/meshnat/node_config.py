"""`NodeConfig`: where a MeshNode listens (one or both IP families), who it is, and whether it
asks its router for port mappings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, cast, get_args

import multiaddr

from meshnat import _libp2p
from meshnat._libp2p import PeerInfo
from meshnat._libp2p.host import QuicStack
from meshnat.config import require_in_range, require_positive
from meshnat.errors import ConfigError

if TYPE_CHECKING:  # not at run time: portmap's service imports meshnat.node, which imports this
    from meshnat.portmap.config import PortMapConfig
if TYPE_CHECKING:
    from meshnat.mesh import MeshConfig

QUIC_STACK_ENV = "MESHNAT_QUIC_STACK"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Where a MeshNode listens and who it is."""

    listen_ip: str = "0.0.0.0"
    """IP address to listen on for TCP and QUIC; `0.0.0.0` means every IPv4 interface."""

    listen_ip6: str | None = None
    """IPv6 address to listen on as well (dual stack: `::` means every IPv6 interface), on
    the same TCP and UDP port numbers as `listen_ip`, which must then be IPv4; None: one
    family only. Needs meshnat's QUIC stack (its datagram tap serves both sockets)."""

    tcp_port: int = 0
    """TCP listen port; 0 picks a free one."""

    udp_port: int = 0
    """UDP (QUIC) listen port; 0 picks a free one. Reflection and punching share it."""

    key_file: Path | None = None
    """Ed25519 identity file, created (mode 0600) if missing; None gives a fresh identity."""

    dial_timeout: float = 10.0
    """Seconds to wait for one outbound connection."""

    stream_timeout: float = 10.0
    """Seconds to wait for protocol negotiation of one outbound stream."""

    max_connections: int = 2048
    """Connections the host keeps at most (a relay holds one per reservation)."""

    max_connections_per_network: int = 128
    """Inbound connections the peers of one source network (IPv4 /24, IPv6 /56; relay
    circuits count as one) hold at most: fresh peer ids are free, so without it one host
    fills `max_connections`."""

    quic_stack: QuicStack = field(
        default_factory=lambda: cast(QuicStack, os.environ.get(QUIC_STACK_ENV, "meshnat")))
    """QUIC transport: `meshnat` (meshnat's own on qh3, the default, ~20x faster;
    `_libp2p.quic`) or `py-libp2p` (its own, aioquic). The environment variable
    MESHNAT_QUIC_STACK sets the default."""

    service_restarts: int = 5
    """Restarts a mounted service that fails gets within `service_restart_window`; the next
    failure stops the node with ServiceFailed (systemd's StartLimitBurst is 5 as well)."""

    service_restart_window: float = 60.0
    """Seconds over which a service's failures are counted against `service_restarts`."""

    service_restart_backoff: float = 0.1
    """Seconds before a failed service is restarted (systemd's RestartSec default), doubled
    for each further failure within the window, at most `MAX_RESTART_BACKOFF`."""

    port_mapping: bool | PortMapConfig = False
    """Mount a PortMapper when the node starts (`MeshNode.port_mapper`) with this PortMapConfig
    (True: the defaults): it asks the gateway for mappings of the listen ports (PCP, NAT-PMP,
    then UPnP-IGD) and releases them when the node stops. Off by default: it changes the
    router's state, and a mapping is advertised only after a helper dialled back to it:
    `port_mapping_helpers`, else (with `bootstrap` or `mesh`) the mesh's reflectors, and then
    the mesh's published record carries the confirmed mappings (ConfigError with neither)."""

    port_mapping_helpers: tuple[PeerInfo, ...] = ()
    """Peers that confirm the mapper's mappings by a dial-back, running ProbeHelperService
    (UDP) and DialBackService (TCP; `meshnat reflector` and `meshnat relay` run both); given,
    they are used instead of the mesh's reflectors."""
    bootstrap: tuple[str, ...] = ()
    """Multiaddrs (ending in /p2p/<peer id>) of mesh nodes to join through; given (or with
    `mesh`), the node organizes itself (`meshnat.mesh.Mesh`) and `connect(peer_id)` works."""

    mesh: MeshConfig | None = None
    """How the node organizes itself; set without `bootstrap` for the first node of a mesh."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", tuple(self.bootstrap))
        for addr in self.bootstrap:
            _libp2p.parse_peer_addr(addr)
        try:
            ip_address(self.listen_ip)
        except ValueError:
            raise ConfigError(f"listen_ip must be an IP address, got {self.listen_ip!r}") from None
        if self.listen_ip6 is not None:
            try:
                ip6 = ip_address(self.listen_ip6)
            except ValueError:
                raise ConfigError(f"listen_ip6 must be an IPv6 address, got "
                                  f"{self.listen_ip6!r}") from None
            if ip6.version != 6 or ip_address(self.listen_ip).version != 4:
                raise ConfigError("listen_ip6 needs an IPv6 address beside an IPv4 listen_ip")
        require_in_range(self, 0, 65535, "tcp_port", "udp_port")
        require_in_range(self, 1, 1_000_000, "max_connections", "max_connections_per_network")
        require_in_range(self, 0, 1000, "service_restarts")
        if self.quic_stack not in get_args(QuicStack):
            raise ConfigError(f"quic_stack must be one of {get_args(QuicStack)}")
        if self.listen_ip6 is not None and self.quic_stack != "meshnat":
            raise ConfigError("listen_ip6 (dual stack) needs quic_stack='meshnat'")
        if self.port_mapping and not (self.port_mapping_helpers or self.bootstrap
                                      or self.mesh is not None):
            raise ConfigError("port_mapping needs port_mapping_helpers or a mesh (peers that "
                              "confirm a mapping by a dial-back; nothing is advertised "
                              "without them)")
        require_positive(self, "dial_timeout", "stream_timeout", "service_restart_window",
                         "service_restart_backoff")

    def listen_ips(self) -> list[str]:
        """`listen_ip`, then `listen_ip6` if set."""
        return [self.listen_ip] + ([self.listen_ip6] if self.listen_ip6 is not None else [])

    def listen_addrs(self, tcp_port: int | None = None, udp_port: int | None = None
                     ) -> list[multiaddr.Multiaddr]:
        """TCP and QUIC listen multiaddrs on every `listen_ips()` address (the configured
        ports unless others are given)."""
        out = []
        for text in self.listen_ips():
            ip = ip_address(text)
            proto = "ip4" if ip.version == 4 else "ip6"
            out += [
                multiaddr.Multiaddr(f"/{proto}/{ip}/tcp/{tcp_port or self.tcp_port}"),
                multiaddr.Multiaddr(f"/{proto}/{ip}/udp/{udp_port or self.udp_port}/quic-v1"),
            ]
        return out
