"""Learning this node's public address from mesh reflectors, by majority vote."""

from meshnat.discovery.consensus import Consensus, Observation, decide
from meshnat.discovery.service import DiscoveryConfig, PeerAddressDiscovery

__all__ = ["Consensus", "DiscoveryConfig", "Observation", "PeerAddressDiscovery", "decide"]
