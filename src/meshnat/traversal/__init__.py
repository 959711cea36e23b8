"""Explicit traversal sessions: port pairs found, kept alive, taken, and used by a stream."""

from meshnat.traversal.pairs import PairState, PortPair
from meshnat.traversal.service import TraversalService
from meshnat.traversal.session import PairStream, Traversal, TraversalConfig

__all__ = ["PairState", "PairStream", "PortPair", "Traversal", "TraversalConfig",
           "TraversalService"]
