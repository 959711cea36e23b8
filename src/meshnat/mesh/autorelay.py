"""Which relays a node behind NAT reserves on (pure; go-libp2p AutoRelay's rules).

Candidates are confirmed-public peers that speak the relay hop protocol, ranked by RTT. The
node holds `count` reservations on distinct networks; a relay that leaves is dropped and
replaced; a refusal backs that relay off for `refusal_backoff` (go-libp2p: 1 h), any other
failure for `failure_backoff`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RelayOption:
    """A relay this node could reserve on, as measured now."""

    peer: str
    network: str
    rtt: float


class AutoRelay:
    """Tracks reservations held and relays backed off."""

    def __init__(self, *, count: int = 2, refusal_backoff: float = 3600.0,
                 failure_backoff: float = 60.0) -> None:
        self.count, self.refusal_backoff = count, refusal_backoff
        self.failure_backoff = failure_backoff
        self.held: dict[str, str] = {}
        """Relays holding a reservation for this node: peer -> network."""
        self._backoff: dict[str, float] = {}

    def to_reserve(self, options: Sequence[RelayOption], now: float) -> list[RelayOption]:
        """The relays to try now, best first, enough to reach `count` on distinct networks."""
        self._backoff = {p: t for p, t in self._backoff.items() if t > now}
        networks = set(self.held.values())
        picked: list[RelayOption] = []
        for option in sorted(options, key=lambda o: o.rtt):
            if len(self.held) + len(picked) >= self.count:
                break
            if (option.peer in self.held or option.peer in self._backoff
                    or option.network in networks):
                continue
            picked.append(option)
            networks.add(option.network)
        return picked

    def to_drop(self, options: Sequence[RelayOption]) -> list[str]:
        """Held relays that are no longer candidates (gone, or no longer public): forgotten
        here, to be replaced by the next `to_reserve`."""
        present = {o.peer for o in options}
        gone = [peer for peer in self.held if peer not in present]
        for peer in gone:
            del self.held[peer]
        return gone

    def reserved(self, option: RelayOption) -> None:
        self.held[option.peer] = option.network

    def refused(self, peer: str, now: float) -> None:
        self._backoff[peer] = now + self.refusal_backoff

    def failed(self, peer: str, now: float) -> None:
        self.held.pop(peer, None)
        self._backoff[peer] = now + self.failure_backoff
