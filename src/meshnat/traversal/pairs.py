"""Pure bookkeeping of one traversal's UDP port pairs: which answered, which to keep alive,
which was taken and by when it must be used. No sockets, no clock: `now` is passed in."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from meshnat.endpoint import Endpoint
from meshnat.errors import PairExpired, PairTaken, UnknownPair
from meshnat.wire.codec import describe

TRAVERSAL_ID_SIZE = 8
"""Hex digits of a traversal id: the first 4 bytes of its txid."""


def traversal_id(txid: bytes) -> str:
    """The short id both sides know a traversal by (`1a2b3c4d`)."""
    return txid.hex()[:TRAVERSAL_ID_SIZE]


@dataclass(frozen=True, slots=True, order=True)
class PairId:
    """A pair's id: its traversal's id and its number there (`1a2b3c4d.1`)."""

    traversal: str
    index: int

    def __str__(self) -> str:
        return f"{self.traversal}.{self.index}"

    @classmethod
    def parse(cls, text: str) -> PairId:
        """`<traversal>.<n>` as the control socket names it; raises UnknownPair."""
        traversal, index = parse_ref(text)
        if index is None:
            raise UnknownPair(f"not a pair id: {describe(text)}")
        return cls(traversal, index)


def parse_ref(text: str) -> tuple[str, int | None]:
    """A traversal id (`1a2b3c4d`, index None) or a pair id (`1a2b3c4d.1`); raises
    UnknownPair for anything else, naming no more than a few bytes of it."""
    head, dot, tail = text.partition(".")
    if len(head) == TRAVERSAL_ID_SIZE and all(c in "0123456789abcdef" for c in head):
        if not dot:
            return head, None
        if tail.isdecimal() and tail.isascii() and len(tail) <= 3:
            return head, int(tail)
    raise UnknownPair(f"not a traversal or pair id: {describe(text)}")


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

    ref: PairId
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

    @property
    def id(self) -> str:
        """The id as the control socket shows it (`1a2b3c4d.1`)."""
        return str(self.ref)

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
        self._remotes: dict[int, Endpoint] = {}  # pair index -> the peer's endpoint
        self._sent: dict[Endpoint, float] = {}

    def pairs(self) -> list[PortPair]:
        return list(self._pairs.values())

    def get(self, pair_id: PairId) -> PortPair:
        remote = self._remotes.get(pair_id.index) \
            if pair_id.traversal == self.traversal_id else None
        if remote is None:
            raise UnknownPair(f"no pair {pair_id}")
        return self._pairs[remote]

    def find(self, remote: Endpoint) -> PortPair | None:
        """The pair toward the peer's endpoint `remote`, if there is one."""
        return self._pairs.get(remote)

    def add_candidate(self, remote: Endpoint, now: float) -> None:
        """Start probing `remote` (a candidate the peer offered)."""
        if remote not in self._pairs and len(self._pairs) < self.max_pairs:
            self._pairs[remote] = self._new_pair(remote, now)

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
            pair = self._new_pair(remote, now)
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

    def take(self, pair_id: PairId, now: float, *, use_within: float,
             peer_confirmed: bool = False, dial_on_heard: bool = False) -> PortPair:
        """Hand the pair to the transport: it must be used within `use_within` seconds.

        `peer_confirmed`: the peer took it, so its answer proved our direction; a pair we have
        heard the peer on then counts as alive even before our own probe was answered.
        `dial_on_heard`: this node dials on the pair now, from the port the peer's probe
        reached, to the endpoint it came from; that probe (with the traversal's secret txid)
        proved the endpoint, and the peer's NAT, having sent to us, lets our packets in: a pair
        heard on will do (half a round trip before our own probe's answer).
        """
        pair = self.get(pair_id)
        if pair.state is PairState.TAKEN:
            raise PairTaken(f"pair {pair_id} is already taken")
        heard = pair.state is PairState.PROBING and pair.last_seen is not None
        if pair.state is not PairState.ALIVE and not ((peer_confirmed or dial_on_heard)
                                                      and heard):
            raise PairExpired(f"pair {pair_id} is {pair.state.value}, not alive")
        taken = replace(pair, state=PairState.TAKEN, deadline=now + use_within)
        self._pairs[pair.remote] = taken
        return taken

    def silent_until(self, pair: PortPair) -> float | None:
        """When alive `pair` expires unless the peer is heard on it again."""
        if pair.state is not PairState.ALIVE or pair.last_seen is None:
            return None
        return pair.last_seen + self.pair_timeout

    def expire_stale(self, now: float) -> list[PortPair]:
        """Mark pairs silent for `pair_timeout` expired; returns those just expired. A taken
        pair is not refreshed by keepalives any more: the transport keeps it (or not)."""
        expired = []
        for pair in self.pairs():
            until = self.silent_until(pair)
            if until is not None and now >= until:
                expired.append(self.expire(pair.ref))
        return expired

    def expire(self, pair_id: PairId) -> PortPair:
        """Mark the pair expired (silent, or taken and not used in time)."""
        pair = replace(self.get(pair_id), state=PairState.EXPIRED)
        self._pairs[pair.remote] = pair
        return pair

    def to_probe(self) -> list[Endpoint]:
        """Where probes and keepalives go: pairs being probed or alive."""
        return [p.remote for p in self._pairs.values()
                if p.state in (PairState.PROBING, PairState.ALIVE)]

    def _new_pair(self, remote: Endpoint, now: float) -> PortPair:
        index = len(self._pairs) + 1
        self._remotes[index] = remote
        return PortPair(PairId(self.traversal_id, index), self.local_port, None, remote,
                        PairState.PROBING, now, None, None)
