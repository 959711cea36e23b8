"""Which relays a node behind NAT reserves on (pure; go-libp2p AutoRelay's rules).

Candidates are confirmed-public peers that speak the relay hop protocol, ranked by RTT. The
node holds `count` reservations on distinct networks; a relay that leaves is dropped and
replaced; a refusal backs that relay off for `refusal_backoff` (go-libp2p: 1 h), any other
failure for `failure_backoff`.

A reservation handed out by `to_reserve` is pending until the adapter reports how it ended
(`reserved`, `refused`, `failed`): pending ones count towards `count` and their networks are
taken, so a candidate that ranks better while one is under way does not start a third.
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
    """Tracks reservations held, under way and relays backed off."""

    def __init__(self, *, count: int = 2, refusal_backoff: float = 3600.0,
                 failure_backoff: float = 60.0) -> None:
        self.count, self.refusal_backoff = count, refusal_backoff
        self.failure_backoff = failure_backoff
        self.held: dict[str, str] = {}
        """Relays holding a reservation for this node: peer -> network."""
        self.pending: dict[str, str] = {}
        """Reservations handed out by `to_reserve` and not yet settled: peer -> network."""
        self._backoff: dict[str, float] = {}

    def to_reserve(self, options: Sequence[RelayOption], now: float) -> list[RelayOption]:
        """The relays to try now, best first, enough to reach `count` on distinct networks
        with those held and those under way; each returned one is pending from now on."""
        self._backoff = {p: t for p, t in self._backoff.items() if t > now}
        networks = {*self.held.values(), *self.pending.values()}
        picked: list[RelayOption] = []
        for option in sorted(options, key=lambda o: o.rtt):
            if len(self.held) + len(self.pending) >= self.count:
                break
            if (option.peer in self.held or option.peer in self.pending
                    or option.peer in self._backoff or option.network in networks):
                continue
            picked.append(option)
            self.pending[option.peer] = option.network
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
        self.pending.pop(option.peer, None)
        self.held[option.peer] = option.network

    def refused(self, peer: str, now: float) -> None:
        self.pending.pop(peer, None)
        self._backoff[peer] = now + self.refusal_backoff

    def failed(self, peer: str, now: float) -> None:
        self.pending.pop(peer, None)
        self.held.pop(peer, None)
        self._backoff[peer] = now + self.failure_backoff

    def abandoned(self, peer: str) -> None:
        """A reservation under way that ended with no answer (the task was cancelled)."""
        self.pending.pop(peer, None)
