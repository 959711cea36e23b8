"""A `PairCore` adapter for the sans-IO `TraversalSession` (src/meshnat/traversal/core.py),
with the coordination stream (`Take`, its answer) modelled as a channel of fixed delay.

What the trio driver and `TraversalService` do, minus the sockets: probes go out as the
session framed them, datagrams that are not a traversal Probe are dropped; the taker takes
the first pair that comes alive, to dial on it, and tells the peer (`Take`, `dial=False`),
which takes its end and listens, or refuses. The outcome is the taken `PortPair` (on the
taker when it takes, on the other side at its `Listen` or `Dial`), and the transport on it
counts as up at once.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshnat.datagrams import parse_datagram
from meshnat.endpoint import Endpoint
from meshnat.traversal.budget import SendBudget
from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.core import Dial, Listen, SendProbe, TraversalSession
from meshnat.traversal.early import INITIAL_BYTES, EarlyStep, Step
from meshnat.traversal.messages import Probe, Refusal, Take
from meshnat.traversal.pairs import PairState
from tests.pair.harness import Finished, Outgoing

_order = itertools.count()


@dataclass(frozen=True, slots=True)
class Accepted:
    """The peer took its end of the pair (`TakeAccept`)."""


class TraversalCore:
    """One side of a traversal on the node's port `local`, probing `candidates`."""

    def __init__(self, txid: bytes, local: Endpoint, candidates: Sequence[Endpoint],
                 config: TraversalConfig, *, taker: bool, coordination_delay: float,
                 paid: int) -> None:
        """`paid`: bytes the peer's Offer paid for probes to its unproven IPs."""
        self.session = TraversalSession(txid, local.port, config, 0.0,
                                        budget=SendBudget(paid=paid))
        self.local, self.candidates, self.taker = local, tuple(candidates), taker
        self.sockets = frozenset({local})
        self.peer: TraversalCore | None = None
        self.refused: list[Refusal] = []
        self._delay = coordination_delay
        self._inbox: list[tuple[float, int, Take | Accepted | Refusal]] = []
        self._out: list[Outgoing | Finished] = []

    def post(self, at: float, message: Take | Accepted | Refusal) -> None:
        """A coordination message from the peer, arriving at `at`."""
        heapq.heappush(self._inbox, (at, next(_order), message))

    def start(self, now: float) -> None:
        self.session.start(self.candidates, now)
        self._drain_session(now)

    def feed(self, local: Endpoint, src: Endpoint, payload: bytes, now: float) -> None:
        probe = parse_datagram(payload, Probe)
        if probe is not None:
            self.session.receive_probe(probe, src, now)
        self._maybe_take(now)
        self._drain_session(now)

    def handle_timer(self, now: float) -> None:
        while self._inbox and self._inbox[0][0] <= now:
            self._coordinate(heapq.heappop(self._inbox)[2], now)
        timer = self.session.get_timer()
        if timer is not None and timer <= now:
            self.session.handle_timer(now)
        self._maybe_take(now)
        self._drain_session(now)

    def get_timer(self) -> float | None:
        timers = [t for t in (self.session.get_timer(),
                              self._inbox[0][0] if self._inbox else None) if t is not None]
        return min(timers, default=None)

    def drain(self) -> list[Outgoing | Finished]:
        out, self._out = self._out, []
        return out

    def _coordinate(self, message: Take | Accepted | Refusal, now: float) -> None:
        assert self.peer is not None
        match message:
            case Take():
                answer = self.session.peer_take(message, now)
                self.peer.post(now + self._delay,
                               answer if isinstance(answer, Refusal) else Accepted())
            case Refusal():
                self.refused.append(message)
                self.session.take_refused(now)

    def _maybe_take(self, now: float) -> None:
        if not self.taker or self.session.dialer is not None:
            return
        alive = [p for p in self.session.table.pairs() if p.state is PairState.ALIVE]
        if alive:
            assert self.peer is not None
            pair = self.session.take(alive[0].ref, now, dial=True,
                                     use_within=self.session.config.take_deadline)
            self.session.connected(now)
            self._out.append(Finished(pair))
            self.peer.post(now + self._delay,
                           Take(self.session.txid, pair.remote, pair.local, dial=False))

    def _drain_session(self, now: float) -> None:
        while (action := self.session.next_action()) is not None:
            match action:
                case SendProbe(dst=dst, datagram=datagram):
                    self._out.append(Outgoing(self.local, dst, datagram))
                case Dial(pair=pair) | Listen(pair=pair):
                    self.session.connected(now)
                    self._out.append(Finished(pair))
                case EarlyStep():
                    self._early(action, now)
                case _:
                    pass  # StopCarrier, Expired: bookkeeping the pair tests read off the table

    def _early(self, action: EarlyStep, now: float) -> None:
        """An early dial's step (only `PunchDialer` dials early)."""


def traversal_pair(txid: bytes, a: tuple[Endpoint, Sequence[Endpoint]],
                   b: tuple[Endpoint, Sequence[Endpoint]], config: TraversalConfig, *,
                   coordination_delay: float) -> tuple[TraversalCore, TraversalCore]:
    """Two sides, (local endpoint, the peer's candidates) each; `a` takes, `b` is told."""
    sides = [TraversalCore(txid, local, candidates, config, taker=taker,
                           coordination_delay=coordination_delay, paid=config.offer_padding)
             for (local, candidates), taker in ((a, True), (b, False))]
    sides[0].peer, sides[1].peer = sides[1], sides[0]
    return sides[0], sides[1]


INITIAL = b"QUIC-Initial".ljust(INITIAL_BYTES, b"\0")
"""What stands in for the dialler's QUIC Initial: a datagram of its size."""


class PunchDialer(TraversalCore):
    """The punch initiator's traversal, as `punch/race.py` runs it: the first pair the peer
    was heard on (alive or not) is taken to dial, and the peer is not told (it waits for the
    connection). Its QUIC Initial is `INITIAL`: with `early`, sent at `DialEarly` and
    `ReplayFirstFlight`; without, at the take (the dial on the peer's first probe, as
    before). The outcome is the pair taken."""

    def __init__(self, *args: Any, early: bool, **kwargs: Any) -> None:
        super().__init__(*args, taker=True, **kwargs)
        self.early = early
        self.initials: list[tuple[float, Endpoint]] = []
        self.abandoned: list[float] = []

    def start(self, now: float) -> None:
        self.session.start(self.candidates, now, dial_early=self.early)
        self._drain_session(now)

    def _maybe_take(self, now: float) -> None:
        if self.session.dialer is not None:
            return
        heard = [p for p in self.session.table.pairs() if p.state is PairState.ALIVE
                 or (p.state is PairState.PROBING and p.last_seen is not None)]
        if heard:
            pair = self.session.take(heard[0].ref, now, dial=True, on_heard=True,
                                     use_within=self.session.config.take_deadline)
            if not self.session.early_connection(pair.remote):
                self._send_initial(pair.remote, now)  # a dial of its own
            self._out.append(Finished(pair))

    def _send_initial(self, dst: Endpoint, now: float) -> None:
        self.initials.append((now, dst))
        self._out.append(Outgoing(self.local, dst, INITIAL))

    def _early(self, action: EarlyStep, now: float) -> None:
        if action.step is Step.ABANDON:
            self.abandoned.append(now)
        else:  # DIAL, REPLAY
            self._send_initial(action.remote, now)


class PunchListener(TraversalCore):
    """The punch responder's traversal: probes and answers, takes nothing; its outcome is
    the first `INITIAL` to reach its port (QUIC's handshake starts there)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, taker=False, **kwargs)
        self.initials: list[float] = []
        """When each INITIAL arrived."""

    def feed(self, local: Endpoint, src: Endpoint, payload: bytes, now: float) -> None:
        if payload != INITIAL:
            super().feed(local, src, payload, now)
            return
        if not self.initials:
            self._out.append(Finished(src))
        self.initials.append(now)
