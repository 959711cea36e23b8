"""Pure RFC 4787 / RFC 5780 classification from recorded observations.

Theory of operation. One local UDP socket S is measured:
- mapping (RFC 5780 §4.3): S asks reflector A at its primary port, A at a second port, and B
  (another IP) at both ports, one after another. The same mapping everywhere is
  endpoint-independent; a change only with the destination IP is address-dependent; a change
  with the destination port is address-and-port-dependent;
- filtering (RFC 5780 §4.4): before S has sent to anything but A's primary port, A sends into
  the mapping from its second port and B from its own address. B's packet arriving means
  endpoint-independent filtering; only A's second port arriving means address-dependent;
  neither means address-and-port-dependent;
- port allocation: a mapping equal to S's port is preserved; with endpoint-dependent mapping,
  successive mappings that step by the same small delta are sequential, anything else random;
- hairpinning (RFC 4787 §6): S sends to its own mapping; arrival means the NAT hairpins.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from meshnat.classify.report import Filtering, Mapping, PortAllocation
from meshnat.endpoint import Endpoint

MAX_SEQUENTIAL_DELTA = 16
"""Largest step between successive mappings still called sequential (prediction stays cheap)."""


@dataclass(frozen=True, slots=True)
class MappingObservation:
    """S sent to `destination`; the reflector there saw `mapped`."""

    destination: Endpoint
    mapped: Endpoint


def classify_mapping(observations: Sequence[MappingObservation]) -> Mapping | None:
    """Mapping behaviour, or None without two destination IPs and two ports on one of them."""
    ips = {o.destination.ip for o in observations}
    same_ip_pairs = [
        (a, b) for i, a in enumerate(observations) for b in observations[i + 1:]
        if a.destination.ip == b.destination.ip and a.destination.port != b.destination.port
    ]
    if len(ips) < 2 or not same_ip_pairs:
        return None
    if len({o.mapped for o in observations}) == 1:
        return Mapping.ENDPOINT_INDEPENDENT
    if any(a.mapped != b.mapped for a, b in same_ip_pairs):
        return Mapping.ADDRESS_AND_PORT_DEPENDENT
    return Mapping.ADDRESS_DEPENDENT


def classify_filtering(from_other_port: bool | None, from_other_ip: bool | None
                       ) -> Filtering | None:
    """Filtering behaviour from the two unsolicited probes (None = that probe was not made)."""
    if from_other_ip:
        return Filtering.ENDPOINT_INDEPENDENT
    if from_other_port is None or from_other_ip is None:
        return None
    return Filtering.ADDRESS_DEPENDENT if from_other_port else Filtering.ADDRESS_AND_PORT_DEPENDENT


def classify_port_allocation(local_port: int, mapped_ports: Sequence[int]
                             ) -> tuple[PortAllocation | None, int | None]:
    """(allocation, delta) from the mappings' ports in the order they were created."""
    if not mapped_ports:
        return None, None
    distinct = [p for i, p in enumerate(mapped_ports) if p not in mapped_ports[:i]]
    if distinct == [local_port]:
        return PortAllocation.PRESERVED, None
    if len(distinct) < 3:  # two points always look like a line: not enough to tell
        return None, None
    deltas = {b - a for a, b in itertools.pairwise(distinct)}
    if len(deltas) == 1 and 0 < abs(delta := deltas.pop()) <= MAX_SEQUENTIAL_DELTA:
        return PortAllocation.SEQUENTIAL, delta
    return PortAllocation.RANDOM, None
