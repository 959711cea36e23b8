"""Explicit traversal sessions: port pairs found, kept alive, taken, and used by a stream."""

from meshnat.traversal.pairs import PairState, PortPair
from meshnat.traversal.service import (
    PairStream,
    Traversal,
    TraversalConfig,
    TraversalService,
)

__all__ = ["PairState", "PairStream", "PortPair", "Traversal", "TraversalConfig",
           "TraversalService"]
