"""What a discovery round says about this node's NAT mapping, as the hint a punch offer carries
(`MappingHint.from_consensus`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from meshnat.discovery.service import PeerAddressDiscovery
from meshnat.errors import MeshNatError, NoConsensus
from meshnat.punch.messages import MappingHint

log = logging.getLogger(__name__)


async def discover_mapping(discovery: PeerAddressDiscovery,
                           versions: Iterable[int] = (4,)) -> MappingHint:
    """One discovery round per transport (UDP, then TCP) and IP version, best effort:
    afterwards `discovery.latest(transport, version)` holds what was confirmed. Returns the
    IPv4 UDP round's mapping hint (the one a punch Offer carries: IPv4 is what NATs
    translate)."""
    mapping = MappingHint.UNKNOWN
    for version in versions:
        for transport in ("udp", "tcp"):
            try:
                consensus = await discovery.discover(transport, version=version)
            except NoConsensus as exc:
                consensus = exc.consensus
            except MeshNatError as exc:
                log.info("discovery: %s/IPv%d round failed: %s", transport, version, exc)
                continue
            if transport == "udp" and version == 4:
                mapping = MappingHint.from_consensus(consensus)
    return mapping
