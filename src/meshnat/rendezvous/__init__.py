"""Rendezvous by network name: a point where nodes register signed records and find others."""

from meshnat.rendezvous.client import (
    RendezvousClient,
    RendezvousClientConfig,
    RendezvousStatistics,
)
from meshnat.rendezvous.core import RendezvousConfig, RendezvousCore
from meshnat.rendezvous.service import RENDEZVOUS_PROTOCOL, RendezvousService

__all__ = [
    "RENDEZVOUS_PROTOCOL",
    "RendezvousClient",
    "RendezvousClientConfig",
    "RendezvousConfig",
    "RendezvousCore",
    "RendezvousService",
    "RendezvousStatistics",
]
