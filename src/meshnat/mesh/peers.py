"""Which mesh peers this node keeps connections to (pure).

Known peers come from the bootstrap list and the DHT's routing table (server-mode members,
i.e. confirmed public). The node holds direct connections to `target` of them, spread over as
many networks as it can (its reflectors and relays are picked among them); a failed dial backs
that peer off, doubling up to `max_backoff`.
"""

from __future__ import annotations

from collections.abc import Mapping, Set


class Membership:
    """Decides whom to dial next; remembers failed dials."""

    def __init__(self, *, target: int = 8, backoff: float = 10.0,
                 max_backoff: float = 600.0) -> None:
        self.target, self.backoff, self.max_backoff = target, backoff, max_backoff
        self._failures: dict[str, tuple[int, float]] = {}
        """peer -> (failures in a row, not before)."""

    def to_dial(self, known: Mapping[str, str], connected: Set[str], now: float) -> list[str]:
        """Peers of `known` (peer -> network, preferred first) to dial now: new networks
        first, then any, up to `target` connections in all."""
        room = self.target - len(connected & known.keys())
        if room <= 0:
            return []
        networks = {known[p] for p in connected if p in known}
        new_network, same_network = [], []
        for peer in known:
            if peer in connected or self._failures.get(peer, (0, now))[1] > now:
                continue
            if known[peer] in networks:
                same_network.append(peer)
            else:
                new_network.append(peer)
                networks.add(known[peer])
        return [*new_network, *same_network][:room]

    def dialled(self, peer: str, ok: bool, now: float) -> None:
        if ok:
            self._failures.pop(peer, None)
            return
        count = self._failures.get(peer, (0, now))[0] + 1
        self._failures[peer] = (count, now + min(self.backoff * 2 ** (count - 1),
                                                 self.max_backoff))
        if len(self._failures) > 4096:  # bounded: forget the oldest
            del self._failures[next(iter(self._failures))]
