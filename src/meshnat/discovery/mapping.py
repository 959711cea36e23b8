"""What discovery rounds say about this node's NAT mapping, per IP family, as the hints a punch
Offer carries (`MappingHint.from_consensus`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

from meshnat.discovery.service import PeerAddressDiscovery
from meshnat.errors import MeshNatError, NoConsensus
from meshnat.punch.messages import MappingHint

log = logging.getLogger(__name__)


class MappingHints(NamedTuple):
    """This node's mapping hint per IP family (a punch Offer's `mapping` and `mapping6`)."""

    v4: MappingHint = MappingHint.UNKNOWN
    v6: MappingHint = MappingHint.UNKNOWN


async def discover_mapping(discovery: PeerAddressDiscovery,
                           versions: Iterable[int] = (4,)) -> MappingHints:
    """One discovery round per transport (UDP, then TCP) and IP version, best effort:
    afterwards `discovery.latest(transport, version)` holds what was confirmed. Returns each
    family's UDP round's mapping hint (unknown for a family not asked or without an answer)."""
    hints = {4: MappingHint.UNKNOWN, 6: MappingHint.UNKNOWN}
    for version in versions:
        for transport in ("udp", "tcp"):
            try:
                consensus = await discovery.discover(transport, version=version)
            except NoConsensus as exc:
                consensus = exc.consensus
            except MeshNatError as exc:
                log.info("discovery: %s/IPv%d round failed: %s", transport, version, exc)
                continue
            if transport == "udp":
                hints[version] = MappingHint.from_consensus(consensus)
    return MappingHints(hints[4], hints[6])
