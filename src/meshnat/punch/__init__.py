"""Hole punching: coordinated UDP and TCP simultaneous open, authenticated direct connections."""

from meshnat.punch.config import PunchConfig
from meshnat.punch.results import PathStatistics, Punched, PunchStatistics
from meshnat.punch.service import PUNCH_PROTOCOL, HolePuncher

__all__ = ["PUNCH_PROTOCOL", "HolePuncher", "PathStatistics", "PunchConfig", "PunchStatistics",
           "Punched"]
