"""Circuit relay v2 through py-libp2p: a relay service and a client that reserves and dials."""

from meshnat.relay.service import RelayClient, RelayService, RelayServiceConfig

__all__ = ["RelayClient", "RelayService", "RelayServiceConfig"]
