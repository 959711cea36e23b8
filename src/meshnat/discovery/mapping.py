"""What a discovery round says about this node's NAT mapping, as the hint a punch offer carries.

`mapping_hint_from` belongs on `MappingHint` as a classmethod (`MappingHint.from_consensus`);
it lives here until punch/messages.py takes it.
"""

from __future__ import annotations

import logging

from meshnat.discovery.consensus import Consensus
from meshnat.discovery.service import PeerAddressDiscovery
from meshnat.errors import MeshNatError, NoConsensus
from meshnat.punch.messages import MappingHint

log = logging.getLogger(__name__)


def mapping_hint_from(consensus: Consensus) -> MappingHint:
    """The mapping a UDP round shows: one address seen by a majority means endpoint-independent
    mapping; honest reflectors disagreeing on the port means endpoint-dependent; else unknown."""
    if consensus.address is not None:
        return MappingHint.ENDPOINT_INDEPENDENT
    if consensus.endpoint_dependent:
        return MappingHint.ENDPOINT_DEPENDENT
    return MappingHint.UNKNOWN


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
            mapping = mapping_hint_from(consensus)
    return mapping
