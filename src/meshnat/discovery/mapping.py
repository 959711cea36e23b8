"""What a discovery round says about this node's NAT mapping, as the hint a punch offer carries
(`MappingHint.from_consensus`)."""

from __future__ import annotations

import logging

from meshnat.discovery.service import PeerAddressDiscovery
from meshnat.errors import MeshNatError, NoConsensus
from meshnat.punch.messages import MappingHint

log = logging.getLogger(__name__)


async def discover_mapping(discovery: PeerAddressDiscovery) -> MappingHint:
    """One discovery round per transport (UDP, then TCP), best effort: afterwards
    `discovery.latest()` holds what was confirmed. Returns the UDP round's mapping hint."""
    mapping = MappingHint.UNKNOWN
    for transport in ("udp", "tcp"):
        try:
            consensus = await discovery.discover(transport)
        except NoConsensus as exc:
            consensus = exc.consensus
        except MeshNatError as exc:
            log.info("discovery: %s round failed: %s", transport, exc)
            continue
        if transport == "udp":
            mapping = MappingHint.from_consensus(consensus)
    return mapping
