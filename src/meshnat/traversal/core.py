"""`TraversalSession`: one traversal's rules, sans-IO (aioquic-connection style).

The session owns the traversal's port pairs (`PairTable`) and every decision about them: when
a probe or keepalive goes where (paced and bounded by the `SendBudget` while the peer's IP is
not proven), when an alive pair goes silent, which pair is taken and by whom, which side dials
and which listens, when a taken pair's deadline passes, and when the traversal can give
nothing more. It does no I/O and reads no clock: every input takes `now`, and the driver
(`traversal/driver.py`) executes what `next_action()` returns and calls `handle_timer(now)`
once `get_timer()` is reached.

The dialler of a punch may dial early (`start(..., dial_early=True)`, `traversal/early.py`):
its Initial goes with the first probe round, is replayed when the target is heard, and is the
taken pair's connection when the target's pair is taken.

Inputs: `start`, `receive_probe`, `take` (this node takes a pair), `peer_take` (the peer's
`Take`), `take_refused`, `connected`, `disconnected`, `close`, `handle_timer`.
Actions: `SendProbe`, `StopCarrier`, `Listen`, `Dial`, `Expired`, and the early dial's
`EarlyStep`s.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from meshnat.endpoint import Endpoint
from meshnat.errors import PairTaken
from meshnat.traversal.budget import SendBudget, udp_wire_bytes
from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.early import INITIAL_BYTES, EarlyDial, EarlyState, EarlyStep, Step
from meshnat.traversal.messages import ALREADY_TAKEN, NO_MATCHING_PAIR, Probe, Refusal, Take
from meshnat.traversal.pairs import PairId, PairState, PairTable, PortPair, traversal_id
from meshnat.wire import encode, frame_datagram


class ProbeKind(Enum):
    PROBE = "probe"
    """To a candidate that has not answered yet."""
    KEEPALIVE = "keepalive"
    """To an alive pair, holding the NAT mappings open."""
    ANSWER = "answer"
    """An `ack` to the peer's probe, saying where it came from."""


class Expiry(Enum):
    SILENT = "silent"
    """An alive pair the peer was not heard on for `pair_timeout`."""
    UNUSED = "unused"
    """A taken pair with no connection by its deadline."""
    REFUSED = "refused"
    """A pair this node took and the peer would not take."""


class Retired(Enum):
    """Why a traversal can give nothing more (`TraversalSession.retirement`)."""

    USED = "used"
    """Taken, and its connection closed (or none came, the pair expired)."""
    FRUITLESS = "fruitless"
    """Probed for `probe_timeout` without a pair alive or taken."""
    IDLE = "idle"
    """Running `max_untaken` without a pair taken."""


@dataclass(frozen=True, slots=True)
class SendProbe:
    """Send `datagram` (a framed `Probe`) to `dst` from the traversal's carrier."""

    dst: Endpoint
    datagram: bytes
    kind: ProbeKind


@dataclass(frozen=True, slots=True)
class StopCarrier:
    """Probing is over: stop receiving and close an own socket (its port is then free)."""


@dataclass(frozen=True, slots=True)
class Listen:
    """Accept the peer's QUIC connection on `pair`'s local port until `pair.deadline`."""

    pair: PortPair


@dataclass(frozen=True, slots=True)
class Dial:
    """Dial the peer's QUIC listener at `pair.remote` from `pair.local_port` now."""

    pair: PortPair


@dataclass(frozen=True, slots=True)
class Expired:
    """`pair` expired (`cause`); for a taken pair, its listener may go."""

    pair: PortPair
    cause: Expiry


Action = SendProbe | StopCarrier | Listen | Dial | Expired | EarlyStep


@dataclass
class ProbeCounters:
    """Totals of probes (several sessions may share one: a service's over all of them)."""

    probes_sent: int = 0
    keepalives_sent: int = 0
    unproven_bytes: int = 0
    """Bytes (UDP/IP headers included) sent to candidate IPs not proven at the time."""
    withheld: int = 0
    """Probes not sent because an unproven network's allowance was spent."""


class UnprovenPacer:
    """When the next probe to a candidate may go: every round once its IP is proven; before
    that ICE-like backoff, the first at once, then `first_gap` (ICE's Ta) doubling up to
    `max_gap` (ICE's RTO floor)."""

    def __init__(self, *, first_gap: float, max_gap: float) -> None:
        self._first, self._max = first_gap, max(first_gap, max_gap)
        self._next: dict[Endpoint, tuple[float, float]] = {}

    def due(self, remote: Endpoint, proven: bool, now: float) -> bool:
        if proven:
            return True
        at, gap = self._next.get(remote, (now, self._first))
        if now + 1e-9 < at:
            return False
        self._next[remote] = (now + gap, min(gap * 2, self._max))
        return True


class TraversalSession:
    """The state and rules of one traversal; see the module docstring."""

    def __init__(self, txid: bytes, local_port: int, config: TraversalConfig, now: float, *,
                 budget: SendBudget | None = None, counters: ProbeCounters | None = None,
                 max_pairs: int = 8) -> None:
        """`budget`: what may go to the peer's unproven IPs (shared with a punch's other
        paths); `counters`: totals to add to besides this session's own."""
        self.txid, self.id, self.config = txid, traversal_id(txid), config
        self.table = PairTable(self.id, local_port, pair_timeout=config.pair_timeout,
                               max_pairs=max_pairs)
        self.budget = budget if budget is not None else SendBudget(paid=0)
        self.started = now
        self.stats = ProbeCounters()
        self._shared = counters
        self.dialer: bool | None = None
        """Once a pair is taken: whether this node dials on it (else the peer does)."""
        self.stopped = False
        """Probing and keepalives are over (a pair was taken, or the traversal closed)."""
        self.connection_up = False
        self.connection_done = False
        self._taken: PortPair | None = None
        self._actions: deque[Action] = deque()
        self._next_round: float | None = None
        self._keepalive_at: dict[Endpoint, float] = {}
        self._pacer = UnprovenPacer(first_gap=config.probe_interval,
                                    max_gap=config.unproven_interval)
        self._early_target: Endpoint | None = None
        self.early: EarlyDial | None = None
        """The early dial, once made (`start(..., dial_early=True)`)."""

    # --- outputs -------------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        """The next thing to do, in order; None when there is nothing left."""
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        """When `handle_timer` must be called next; None: only an input can change anything."""
        timers = [t for t in (self._next_round, self._deadline_timer(),
                              self.early.timer() if self.early else None) if t is not None]
        if not self.stopped:
            timers.extend(self._keepalive_at.values())
        timers.extend(t for t in map(self.table.silent_until, self.table.pairs())
                      if t is not None)
        return min(timers, default=None)

    def taken(self) -> PortPair | None:
        """The pair handed to the transport, as it stands now (None: none taken)."""
        return None if self._taken is None else self.table.get(self._taken.ref)

    def retirement(self, now: float) -> Retired | None:
        """Why this traversal can give nothing more (then it may be forgotten); None while
        it still can."""
        states = {p.state for p in self.table.pairs()}
        if self.stopped and (self.connection_done if self.connection_up
                             else PairState.TAKEN not in states):
            return Retired.USED
        age = now - self.started
        if age > self.config.probe_timeout and not states & {PairState.ALIVE, PairState.TAKEN}:
            return Retired.FRUITLESS
        if self.dialer is None and age > self.config.max_untaken:
            return Retired.IDLE
        return None

    # --- inputs --------------------------------------------------------------------------------

    def start(self, candidates: Iterable[Endpoint], now: float, *,
              dial_early: bool = False) -> None:
        """Probe `candidates` (the peer's, already admitted, best first) from now on.
        `dial_early`: this node will dial (the punch initiator): QUIC to the first candidate
        goes out with the first probe round, if the budget allows (`traversal/early.py`)."""
        self.started = now
        candidates = tuple(candidates)
        for candidate in candidates:
            self.table.add_candidate(candidate, now)
        self._next_round = now
        if dial_early and candidates:
            self._early_target = candidates[0]

    def early_connection(self, remote: Endpoint) -> bool:
        """Whether the connection of a pair taken to dial to `remote` is the early dial's."""
        return self.early is not None and self.early.state is EarlyState.USED and \
            self.early.target == remote

    def receive_probe(self, probe: Probe, src: Endpoint, now: float) -> None:
        """A `Probe` arrived from `src`. One with this traversal's txid proves `src`'s IP; a
        probe (not an answer) from an endpoint the table holds is answered."""
        if self.stopped or not hmac.compare_digest(probe.txid, self.txid):
            return
        self.budget.prove(src.ip)
        before = self.table.find(src)
        known = self.table.heard(src, now, ack=probe.ack, observed=probe.observed)
        after = self.table.find(src)
        if after is not None and after.state is PairState.ALIVE and \
                (before is None or before.state is not PairState.ALIVE):
            self._keepalive_at[src] = now  # the first keepalive goes at once
        if after is not None and after.state is PairState.PROBING and \
                self._next_round is None and now - self.started < self.config.probe_timeout:
            self._next_round = now  # a peer-reflexive candidate: probe it
        if known and not probe.ack:
            self._send(Probe(self.txid, ack=True, observed=src), src, ProbeKind.ANSWER, now)
        replay = self.early.heard(src) if self.early is not None else None
        if replay is not None:  # the target's NAT is open to us now: its IP is proven
            self._actions.append(replay)

    def take(self, pair_id: PairId, now: float, *, dial: bool, use_within: float,
             on_heard: bool = False) -> PortPair:
        """This node takes `pair_id`, to dial on it (`dial`) or to have the peer dial; it
        must be used within `use_within` s. Probing stops. `on_heard` (with `dial`): a pair
        the peer was heard on will do, alive or not (`PairTable.take`). Raises PairTaken (a
        pair of this traversal is taken already), PairExpired or UnknownPair."""
        if self.dialer is not None:
            raise PairTaken(f"traversal {self.id} has a pair taken already")
        pair = self.table.take(pair_id, now, use_within=use_within,
                               dial_on_heard=on_heard and dial)
        self._hand_over(pair, dial=dial)
        if not dial:
            self._actions.append(Listen(pair))
        return pair

    def peer_take(self, take: Take, now: float) -> PortPair | Refusal:
        """The peer took a pair (its `Take`): take ours toward its end, alive or at least
        heard from (the taker's own check proved the other direction); with no match, the
        only alive pair. The peer dials (we listen) unless `take.dial`."""
        if self.dialer is not None:
            return ALREADY_TAKEN
        pair = _their_pair(self.table.pairs(), take.mine)
        if pair is None:
            return NO_MATCHING_PAIR
        taken = self.table.take(pair.ref, now, use_within=self.config.take_deadline,
                                peer_confirmed=True)
        self._hand_over(taken, dial=take.dial)
        self._actions.append(Dial(taken) if take.dial else Listen(taken))
        return taken

    def take_refused(self, now: float) -> None:
        """The peer did not take the pair this node took: it expires (no other is taken)."""
        pair = self.taken()
        if pair is not None and pair.state is PairState.TAKEN:
            self._expire(pair, Expiry.REFUSED)

    def connected(self, now: float) -> None:
        """The transport runs on the taken pair: its deadline no longer applies."""
        self.connection_up = True

    def disconnected(self, now: float) -> None:
        """The connection on the taken pair closed."""
        self.connection_done = True

    def close(self, now: float) -> None:
        """Stop the traversal (probes, keepalives, the carrier)."""
        self._stop()

    def handle_timer(self, now: float) -> None:
        """Do what is due at `now`: a probe round, keepalives, expiries."""
        if self._next_round is not None and now >= self._next_round:
            self._probe_round(now)
        abandon = self.early.handle_timer(now) if self.early is not None else None
        if abandon is not None:
            self._actions.append(abandon)
        if not self.stopped:
            for remote, at in list(self._keepalive_at.items()):
                pair = self.table.find(remote)
                if pair is None or pair.state is not PairState.ALIVE:
                    del self._keepalive_at[remote]
                elif now >= at:
                    self._keepalive_at[remote] = now + self.config.keepalive_interval
                    self._send(Probe(self.txid), remote, ProbeKind.KEEPALIVE, now)
        for pair in self.table.expire_stale(now):
            self._actions.append(Expired(pair, Expiry.SILENT))
        deadline = self._deadline_timer()
        taken = self.taken()
        if deadline is not None and now >= deadline and taken is not None:
            self._expire(taken, Expiry.UNUSED)

    # --- inside --------------------------------------------------------------------------------

    def _probe_round(self, now: float) -> None:
        if self.stopped or now - self.started >= self.config.probe_timeout:
            self._next_round = None
            return
        probing = [p for p in self.table.pairs() if p.state is PairState.PROBING]
        for pair in probing:
            if self._pacer.due(pair.remote, self.budget.is_proven(pair.remote.ip), now):
                self._send(Probe(self.txid), pair.remote, ProbeKind.PROBE, now)
        self._next_round = now + self.config.probe_interval if probing else None
        if self._early_target is not None:
            self._dial_early(self._early_target, now)
            self._early_target = None

    def _dial_early(self, target: Endpoint, now: float) -> None:
        """The early Initial, charged to the budget as a datagram of `INITIAL_BYTES`."""
        if self._charge(target, udp_wire_bytes(INITIAL_BYTES, target.ip)):
            self.early = EarlyDial(target, now)
            self._actions.append(EarlyStep(Step.DIAL, target))

    def _send(self, probe: Probe, dst: Endpoint, kind: ProbeKind, now: float) -> None:
        """Queue `probe` to `dst` if the budget allows it; count it either way."""
        data = frame_datagram(encode(probe))
        if not self._charge(dst, udp_wire_bytes(len(data), dst.ip)):
            return
        for c in (c for c in (self.stats, self._shared) if c is not None):
            c.probes_sent += kind is ProbeKind.PROBE
            c.keepalives_sent += kind is ProbeKind.KEEPALIVE
        if kind is not ProbeKind.ANSWER:
            self.table.sent(dst, now)
        self._actions.append(SendProbe(dst, data, kind))

    def _charge(self, dst: Endpoint, wire: int) -> bool:
        """Spend `wire` bytes to `dst` from the budget (False: withheld); counted."""
        unproven = not self.budget.is_proven(dst.ip)
        counters = [c for c in (self.stats, self._shared) if c is not None]
        if not self.budget.spend(dst.ip, wire):
            for c in counters:
                c.withheld += 1
            return False
        for c in counters:
            c.unproven_bytes += wire if unproven else 0
        return True

    def _hand_over(self, pair: PortPair, *, dial: bool) -> None:
        self.dialer, self._taken = dial, pair
        self._stop()

    def _stop(self) -> None:
        self._early_target = None
        if self.early is not None:
            dialled = self._taken.remote if self._taken is not None and self.dialer else None
            abandon = self.early.resolve(dialled)
            if abandon is not None:
                self._actions.append(abandon)
        if not self.stopped:
            self.stopped = True
            self._next_round = None
            self._keepalive_at.clear()
            self._actions.append(StopCarrier())

    def _deadline_timer(self) -> float | None:
        taken = self.taken()
        if taken is None or taken.state is not PairState.TAKEN or self.connection_up:
            return None
        return taken.deadline

    def _expire(self, pair: PortPair, cause: Expiry) -> None:
        self._actions.append(Expired(self.table.expire(pair.ref), cause))


def _their_pair(pairs: list[PortPair], mine: Endpoint | None) -> PortPair | None:
    usable = [p for p in pairs if p.state is PairState.ALIVE
              or (p.state is PairState.PROBING and p.last_seen is not None)]
    for pair in usable:
        if pair.remote == mine:
            return pair
    alive = [p for p in usable if p.state is PairState.ALIVE]
    return alive[0] if len(alive) == 1 else None
