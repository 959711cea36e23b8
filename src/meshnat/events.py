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


@dataclass(frozen=True, slots=True)
class PunchSucceeded:
    """A direct connection to `peer` was opened through the NATs."""

    peer: str
    transport: str
    remote: Endpoint
    elapsed: float


@dataclass(frozen=True, slots=True)
class PunchAbandoned:
    """No direct path to `peer` this time; the existing (relayed) connection stays."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class PathLost:
    """A punched connection stopped answering keepalives."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class PathEstablished:
    """Connector reached `peer`: `kind` is `direct`, `punched` or `relayed`."""

    peer: str
    kind: str
    transport: str


@dataclass(frozen=True, slots=True)
class PathUpgraded:
    """A relayed peer is now reached directly; the relayed connection was closed."""

    peer: str
    transport: str
    remote: Endpoint
    elapsed: float


MeshEvent = (AddressConfirmed | AddressDisputed | StreamRejected | PunchSucceeded
             | PunchAbandoned | PathLost | PathEstablished | PathUpgraded)
EventSink = Callable[[MeshEvent], None]


def ignore_events(event: MeshEvent) -> None:
    """The default sink: drops every event."""
