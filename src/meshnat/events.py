"""Public events: past-tense facts that services report to an `EventSink`.

A sink must not block or raise: the CLI queues events for printing (`cli/tunnel.py`), tests
collect them into lists. Paths are `paths.PathKind` labels (`direct`, `punched`, `relayed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshnat.endpoint import Endpoint
from meshnat.paths import PathKind


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
    """Connector reached `peer` over a path of this kind."""

    peer: str
    kind: PathKind
    transport: str


@dataclass(frozen=True, slots=True)
class PathUpgraded:
    """A relayed peer is now reached directly: new streams take the direct connection; the
    relayed one is closed once the streams still open on it have finished."""

    peer: str
    transport: str
    remote: Endpoint
    elapsed: float


@dataclass(frozen=True, slots=True)
class TunnelClosed:
    """One tunnel ended, or was refused before any byte moved.

    `side` is `expose` (this node served it) or `forward` (a local client of this node used
    it). `path` is how the peer was reached: `direct`, `punched` or `relayed` (`none` if no
    path was found). `bytes_out` went from this node into the tunnel, `bytes_in` came out of
    it. `outcome` is `closed` (both sides finished), `idle-timeout`, `reset` (either side
    broke off), `unreachable`, or a refusal code such as `not-allowed` or `target-refused`;
    `error` says what broke or why it was refused.
    """

    side: str
    peer: str
    service: str
    path: str
    bytes_out: int
    bytes_in: int
    duration: float
    outcome: str
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"peer": self.peer, "service": self.service, "path": self.path,
                "bytes_out": self.bytes_out, "bytes_in": self.bytes_in,
                "duration_ms": round(self.duration * 1e3, 3), "outcome": self.outcome,
                "error": self.error}


MeshEvent = (AddressConfirmed | AddressDisputed | StreamRejected | PunchSucceeded
             | PunchAbandoned | PathLost | PathEstablished | PathUpgraded | TunnelClosed)
EventSink = Callable[[MeshEvent], None]


def ignore_events(event: MeshEvent) -> None:
    """The default sink: drops every event."""
