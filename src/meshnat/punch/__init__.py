"""Hole punching: coordinated UDP and TCP simultaneous open, authenticated direct connections."""

from meshnat.punch.service import PUNCH_PROTOCOL, HolePuncher, PunchConfig, Punched

__all__ = ["PUNCH_PROTOCOL", "HolePuncher", "PunchConfig", "Punched"]
