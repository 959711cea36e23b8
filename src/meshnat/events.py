"""Public events: past-tense facts that services report to an `EventSink`.

A sink must not block or raise; `Counters` in metrics.py is one, tests collect into lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshnat.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class AddressConfirmed:
    """A strict majority of observer groups agreed on this node's public endpoint."""

    transport: str
    address: Endpoint
    votes: int
    voters: int


@dataclass(frozen=True, slots=True)
class AddressDisputed:
    """Reflectors answered but did not agree (liars, or an endpoint-dependent NAT)."""

    transport: str
    voters: int
    endpoint_dependent: bool


@dataclass(frozen=True, slots=True)
class StreamRejected:
    """A service refused an inbound stream: `busy`, `malformed`, or an ErrorResponse code."""

    protocol: str
    reason: str


MeshEvent = AddressConfirmed | AddressDisputed | StreamRejected
EventSink = Callable[[MeshEvent], None]


def ignore_events(event: MeshEvent) -> None:
    """The default sink: drops every event."""
