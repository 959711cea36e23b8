"""The meshnat exception hierarchy.

A peer can only ever cause `RemoteProtocolError`, `PeerTimeout` or `PeerUnavailable`; anything
else escaping a service is a meshnat bug. Public calls raise exactly one `MeshNatError`
subclass, never an `ExceptionGroup`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshnat.discovery.consensus import Consensus


class MeshNatError(Exception):
    """Base class for everything meshnat raises on purpose."""


class ConfigError(MeshNatError, ValueError):
    """A configuration value or call argument is invalid."""


class ProtocolError(MeshNatError):
    """Abstract: a protocol rule was broken (see the two subclasses)."""


class LocalProtocolError(ProtocolError):
    """This node (or the calling code) misused a protocol or a core's state."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something the protocol does not allow."""


class MalformedMessage(RemoteProtocolError):
    """Not one CBOR item, wrong types, missing or unknown fields, trailing bytes."""


class MessageTooLarge(RemoteProtocolError):
    """A frame or datagram is larger than the protocol allows."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit}")
        self.size, self.limit = size, limit


class UnsupportedVersion(RemoteProtocolError):
    """The peer speaks a wire version this node does not."""

    def __init__(self, got: int, supported: int) -> None:
        super().__init__(f"wire version {got} is not supported (this node speaks {supported})")
        self.got, self.supported = got, supported


class UnexpectedMessage(RemoteProtocolError):
    """A valid message of a type that is not allowed at this point."""

    def __init__(self, got: int, expected: tuple[int, ...]) -> None:
        super().__init__(f"message type {got} is not one of {list(expected)}")
        self.got, self.expected = got, expected


class PeerRefused(RemoteProtocolError):
    """The peer answered with an explicit error (rate limited, bad request, ...)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"peer refused: {code}: {reason}")
        self.code, self.reason = code, reason


class InvalidRecord(RemoteProtocolError):
    """A signed address record that must not be used; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ForgedRecord(InvalidRecord):
    """The signature does not verify, or the signer is not the peer the record names."""


class StaleRecord(InvalidRecord):
    """Expired, or not newer (by sequence number) than a record already seen for that peer."""


class PeerUnavailable(MeshNatError):
    """No stream could be opened, or the stream broke: the peer is gone or lacks the protocol."""


class PeerTimeout(MeshNatError, TimeoutError):
    """A peer did not answer in time."""

    def __init__(self, stage: str, timeout: float | None = None) -> None:
        tail = f" after {timeout:.2f}s" if timeout is not None else ""
        super().__init__(f"no answer during {stage}{tail}")
        self.stage, self.timeout = stage, timeout


class InsufficientResponses(MeshNatError):
    """Fewer reflectors answered than a decision needs."""

    def __init__(self, got: int, needed: int, asked: int) -> None:
        super().__init__(f"{got} of {asked} reflectors answered; {needed} needed")
        self.got, self.needed, self.asked = got, needed, asked


class NoConsensus(MeshNatError):
    """Reflectors answered but no address has a strict majority; carries the tally."""

    def __init__(self, consensus: Consensus) -> None:
        tally = ", ".join(f"{ep} x{n}" for ep, n in consensus.tally)
        super().__init__(f"no strict majority among {consensus.voters} observer groups: {tally}")
        self.consensus = consensus


class PunchFailed(MeshNatError):
    """No direct path could be opened; carries why and what was tried."""

    def __init__(self, reason: str, *, probes_sent: int = 0,
                 candidates: tuple[str, ...] = ()) -> None:
        super().__init__(f"hole punch failed: {reason}")
        self.reason, self.probes_sent, self.candidates = reason, probes_sent, candidates


class RelayUnavailable(MeshNatError):
    """A relay refused or failed a reservation or a circuit."""


class NotMounted(LocalProtocolError):
    """A service was used before it was mounted on a running node."""


class ServiceFailed(MeshNatError):
    """A mounted service kept failing past its restart limit, so the node stopped."""

    def __init__(self, service: str, failures: int, window: float) -> None:
        super().__init__(f"service {service} failed {failures} times within {window:g} s; "
                         "the node stopped (see the ERROR log for each traceback)")
        self.service, self.failures, self.window = service, failures, window


class TraversalError(MeshNatError):
    """Abstract: a traversal session or one of its port pairs could not do what was asked."""


class UnknownPair(TraversalError, LookupError):
    """No traversal or port pair has that id."""


class PairExpired(TraversalError):
    """The pair is not alive any more (silent too long, or taken and not used in time)."""


class PairTaken(TraversalError):
    """The pair was already taken; a pair is handed to the transport once."""


class ListenerMissing(TraversalError):
    """The peer has no listener on its end of the pair (it expired or was never made)."""


class PortInUse(TraversalError):
    """The pair's local port is held by another socket, so the NAT mapping cannot be reused."""


class TunnelRefused(PeerRefused):
    """The exposing peer would not open a tunnel; `refusal` is its RefusalCode."""

    def __init__(self, refusal: IntEnum, reason: str) -> None:
        super().__init__(refusal.name.lower().replace("_", "-"), reason)
        self.refusal = refusal
