"""Tunnels: expose local TCP services to mesh peers, forward local ports to peers' services."""

from meshnat.tunnel.client import Tunnel
from meshnat.tunnel.core import ANY_PEER, TunnelConfig, TunnelStatistics
from meshnat.tunnel.messages import RefusalCode
from meshnat.tunnel.service import TUNNEL_PROTOCOL, TunnelService

__all__ = ["ANY_PEER", "TUNNEL_PROTOCOL", "RefusalCode", "Tunnel", "TunnelConfig",
           "TunnelService", "TunnelStatistics"]
