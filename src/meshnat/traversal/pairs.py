"""Pure bookkeeping of one traversal's UDP port pairs: which answered, which to keep alive,
which was taken and by when it must be used. No sockets, no clock: `now` is passed in."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from meshnat.endpoint import Endpoint
from meshnat.errors import PairExpired, PairTaken, UnknownPair
from meshnat.wire.codec import describe


class PairState(Enum):
    """Where a port pair stands."""

    PROBING = "probing"
    """Probes go to this candidate; nothing came back yet."""
    ALIVE = "alive"
    """The peer answered on it; keepalives hold the NAT mappings open."""
    TAKEN = "taken"
    """Handed to the transport, which must use it before `deadline`."""
    EXPIRED = "expired"
    """Silent for too long, or taken and not used in time: the NAT may have dropped it."""


@dataclass(frozen=True, slots=True)
class PortPair:
    """One path through both NATs: this node's local port to one endpoint of the peer."""

    id: str
    local_port: int
    local: Endpoint | None
    """This node's public endpoint for `local_port` as far as known (None: not learnt)."""
    remote: Endpoint
    state: PairState
    created: float
    last_seen: float | None
    rtt: float | None
    deadline: float | None = None
    """For TAKEN: when the pair must have been used by."""

    def to_json(self, now: float) -> dict[str, object]:
        return {"id": self.id, "state": self.state.value, "local_port": self.local_port,
                "local": str(self.local) if self.local else None, "remote": str(self.remote),
                "rtt_ms": None if self.rtt is None else round(self.rtt * 1e3, 3),
                "age_s": round(now - self.created, 3),
                "last_seen_s_ago": None if self.last_seen is None
                else round(now - self.last_seen, 3),
                "deadline_s": None if self.deadline is None else round(self.deadline - now, 3)}


class PairTable:
    """The pairs of one traversal, keyed by the peer's endpoint, and their state changes."""

    def __init__(self, traversal_id: str, local_port: int, *, pair_timeout: float,
                 max_pairs: int = 8) -> None:
        self.traversal_id, self.local_port = traversal_id, local_port
        self.pair_timeout, self.max_pairs = pair_timeout, max_pairs
        self._pairs: dict[Endpoint, PortPair] = {}
        self._sent: dict[Endpoint, float] = {}

    def pairs(self) -> list[PortPair]:
        return list(self._pairs.values())

    def get(self, pair_id: str) -> PortPair:
        for pair in self._pairs.values():
            if pair.id == pair_id:
                return pair
        raise UnknownPair(f"no pair {describe(pair_id)}")

    def add_candidate(self, remote: Endpoint, now: float) -> None:
        """Start probing `remote` (a candidate the peer offered)."""
        if remote not in self._pairs and len(self._pairs) < self.max_pairs:
            self._pairs[remote] = PortPair(self._new_id(), self.local_port, None, remote,
                                           PairState.PROBING, now, None, None)

    def sent(self, remote: Endpoint, now: float) -> None:
        """A probe went to `remote` at `now` (for the RTT of its answer)."""
        self._sent[remote] = now

    def heard(self, remote: Endpoint, now: float, *, ack: bool,
              observed: Endpoint | None = None) -> bool:
        """A probe from `remote` arrived. An answer to ours (`ack`) proves both directions:
        the pair is alive, with its RTT and this node's public endpoint as the peer saw it
        (`observed`). A new pair appears when the peer's NAT used an endpoint it did not offer,
        as endpoint-dependent NATs do; it is probed like the others. An answer from where no
        probe of ours went proves nothing and counts as a probe. Returns whether `remote` is
        one of the table's pairs (the table is bounded: the rest is ignored)."""
        pair = self._pairs.get(remote)
        if pair is None:
            if len(self._pairs) >= self.max_pairs:
                return False
            pair = PortPair(self._new_id(), self.local_port, None, remote,
                            PairState.PROBING, now, None, None)
        if pair.state in (PairState.TAKEN, PairState.EXPIRED):
            self._pairs[remote] = pair
            return True
        if not ack or remote not in self._sent:
            self._pairs[remote] = replace(pair, last_seen=now)
            return True
        sent = self._sent.get(remote)
        self._pairs[remote] = replace(
            pair, state=PairState.ALIVE, last_seen=now,
            rtt=pair.rtt if sent is None else now - sent,
            local=observed if observed is not None else pair.local)
        return True

    def take(self, pair_id: str, now: float, *, use_within: float,
             peer_confirmed: bool = False) -> PortPair:
        """Hand the pair to the transport: it must be used within `use_within` seconds.

        `peer_confirmed`: the peer took it, so its answer proved our direction; a pair we have
        heard the peer on then counts as alive even before our own probe was answered.
        """
        pair = self.get(pair_id)
        if pair.state is PairState.TAKEN:
            raise PairTaken(f"pair {pair_id} is already taken")
        heard = pair.state is PairState.PROBING and pair.last_seen is not None
        if pair.state is not PairState.ALIVE and not (peer_confirmed and heard):
            raise PairExpired(f"pair {pair_id} is {pair.state.value}, not alive")
        taken = replace(pair, state=PairState.TAKEN, deadline=now + use_within)
        self._pairs[pair.remote] = taken
        return taken

    def expire_stale(self, now: float) -> list[PortPair]:
        """Mark pairs silent for `pair_timeout` expired; returns those just expired. A taken
        pair is not refreshed by keepalives any more: the transport keeps it (or not)."""
        expired = []
        for remote, pair in list(self._pairs.items()):
            if pair.state is PairState.ALIVE and pair.last_seen is not None \
                    and now - pair.last_seen > self.pair_timeout:
                expired.append(replace(pair, state=PairState.EXPIRED))
                self._pairs[remote] = expired[-1]
        return expired

    def expire(self, pair_id: str) -> PortPair:
        """A taken pair that was not used before its deadline."""
        pair = replace(self.get(pair_id), state=PairState.EXPIRED)
        self._pairs[pair.remote] = pair
        return pair

    def to_probe(self) -> list[Endpoint]:
        """Where probes and keepalives go: pairs being probed or alive."""
        return [p.remote for p in self._pairs.values()
                if p.state in (PairState.PROBING, PairState.ALIVE)]

    def _new_id(self) -> str:
        return f"{self.traversal_id}.{len(self._pairs) + 1}"
