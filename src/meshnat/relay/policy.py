"""Pure relay policy: which relays to reserve on, best first; what a relay hop may hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshnat.limits import Claim, SlotLimit


@dataclass(frozen=True, slots=True)
class RelayCandidate:
    """A relay as measured just now: `rtt` is None when it could not be reached."""

    name: str
    rtt: float | None
    public: bool | None = None
    """Whether checks found it publicly reachable (None: not checked)."""


def rank_relays(candidates: Sequence[RelayCandidate]) -> list[RelayCandidate]:
    """Reachable relays only: those found public first, then unchecked, then the rest; within
    each, lower round-trip time first (ties keep the caller's order)."""
    reachable = [c for c in candidates if c.rtt is not None]
    order = {True: 0, None: 1, False: 2}
    return sorted(reachable, key=lambda c: (order[c.public], c.rtt))


class HopLimits:
    """What a relay hop holds for whom: reservations, circuits and hop streams, each bounded
    per peer id, per source network (IPv4 /24, IPv6 /56) and in total (pure: time is `now`).

    A peer holds at most one reservation (a refresh keeps its slot and extends it); a
    reservation's slot is freed when its peer has no connection to the relay left (`release`)
    or when it expires unrefreshed, whichever comes first. Circuits are counted for the peer
    that asked for them and its network. Hop streams are counted while their one message is
    read and answered, so silent streams cannot pile up either.
    """

    def __init__(self, *, max_reservations: int, reservations_per_network: int,
                 reservation_ttl: float, max_circuits: int, circuits_per_peer: int,
                 circuits_per_network: int, max_hop_streams: int, hop_streams_per_peer: int,
                 hop_streams_per_network: int) -> None:
        self._reservations = SlotLimit(total=max_reservations, per_peer=1,
                                       per_network=reservations_per_network)
        self._held: dict[str, tuple[Claim, float]] = {}
        self._ttl = reservation_ttl
        self._circuits = SlotLimit(total=max_circuits, per_peer=circuits_per_peer,
                                   per_network=circuits_per_network)
        self._streams = SlotLimit(total=max_hop_streams, per_peer=hop_streams_per_peer,
                                  per_network=hop_streams_per_network)

    def reserve(self, peer: str, network: str, now: float) -> bool:
        """Give `peer` (or refresh) its reservation; False if a bound is reached."""
        self._expire(now)
        held = self._held.get(peer)
        if held is None:
            claim = self._reservations.acquire(peer, network)
            if claim is None:
                return False
            held = (claim, now)
        self._held[peer] = (held[0], now + self._ttl)
        return True

    def release(self, peer: str) -> bool:
        """Free `peer`'s reservation (its last connection closed); False if it held none."""
        held = self._held.pop(peer, None)
        if held is None:
            return False
        self._reservations.release(held[0])
        return True

    def _expire(self, now: float) -> None:
        for peer in [p for p, (_, expires) in self._held.items() if expires <= now]:
            self._reservations.release(self._held.pop(peer)[0])

    def open_circuit(self, peer: str, network: str) -> Claim | None:
        return self._circuits.acquire(peer, network)

    def close_circuit(self, claim: Claim) -> None:
        self._circuits.release(claim)

    def open_stream(self, peer: str, network: str) -> Claim | None:
        return self._streams.acquire(peer, network)

    def close_stream(self, claim: Claim) -> None:
        self._streams.release(claim)

    def statistics(self) -> HopStatistics:
        return HopStatistics(
            self._reservations.held, self._circuits.held, self._streams.held,
            dict(self._reservations.refused), dict(self._circuits.refused),
            dict(self._streams.refused))


@dataclass(frozen=True, slots=True)
class HopStatistics:
    """A snapshot of a relay hop's holdings and refusals (by bound: peer, network, total)."""

    reservations: int
    circuits: int
    streams: int
    reservations_refused: dict[str, int]
    circuits_refused: dict[str, int]
    streams_refused: dict[str, int]
