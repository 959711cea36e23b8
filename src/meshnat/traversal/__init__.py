"""Explicit traversal sessions: port pairs found, kept alive, taken, and used by a stream."""

from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.core import TraversalSession
from meshnat.traversal.pairs import PairId, PairState, PortPair
from meshnat.traversal.service import TraversalService
from meshnat.traversal.session import PairStream, Traversal
from meshnat.traversal.statistics import TraversalStatistics

__all__ = ["PairId", "PairState", "PairStream", "PortPair", "Traversal", "TraversalConfig",
           "TraversalService", "TraversalSession", "TraversalStatistics"]
