"""The early QUIC dial of a traversal's dialler (the punch initiator), pure: `EarlyDial`.

Without it the initiator dials QUIC once the responder's first probe arrives: its own probing
began about half a direct round trip before that, and the Initial then takes another half to
arrive. With it, the Initial goes to the best candidate (the first the peer's Offer names: its
public mapping) right after the first probe round, so it arrives with that round's probe, and
it is replayed (the same datagrams, `Step.REPLAY`) once that candidate's first probe
arrives: a far NAT whose mapping was not open yet dropped the first copy, and qh3 would resend
it only after its PTO (~1 s: initial_rtt 0.333 s). When the pair taken is the target's, the
dial already under way is the connection (`EarlyDial.resolve`); any other outcome abandons it.

Threat model: the target is a candidate the peer named in its Offer, sent over the
authenticated coordination stream, and its IP is not proven when the Initial goes, so it is
charged to the traversal's `SendBudget` (3x what the peer paid, per /24 or /56) as a probe is,
at `INITIAL_BYTES`; with too little left there is no early dial. That is one datagram, and the
replay goes only once a probe with the txid came from the target (its IP proven). A target
not heard within `EARLY_WINDOW` is abandoned before qh3's first retransmission, and silently
(no CONNECTION_CLOSE, which would be one more padded Initial to an unproven address).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from meshnat.endpoint import Endpoint

INITIAL_BYTES = 1280
"""Payload bytes of the client's first datagram: qh3 pads it to `max_datagram_size` (1280)."""

EARLY_WINDOW = 0.5
"""Seconds the early dial waits for the target to be heard before it is abandoned: below qh3's
first Initial retransmission (~1 s), above a probe round trip at any RTT the lab runs."""


class Step(Enum):
    DIAL, REPLAY, ABANDON = "dial", "replay", "abandon"


@dataclass(frozen=True, slots=True)
class EarlyStep:
    """An action of the early dial to `remote`: `DIAL` QUIC there from the traversal's port
    now (its first flight: one Initial); `REPLAY` that first flight, unless the peer answered
    it; `ABANDON` the dial (unless it connected), with no CONNECTION_CLOSE."""

    step: Step
    remote: Endpoint


class EarlyState(Enum):
    """`USED`: the pair taken is the target's, and the early dial is its connection."""

    DIALLED, REPLAYED, USED, ABANDONED = "dialled", "replayed", "used", "abandoned"


class EarlyDial:
    """One early dial's rules: dialled at `now` to `target`, replayed at most once."""

    def __init__(self, target: Endpoint, now: float, *, window: float = EARLY_WINDOW) -> None:
        self.target = target
        self.state = EarlyState.DIALLED
        self._until = now + window

    @property
    def pending(self) -> bool:
        """Dialled (and maybe replayed), neither used nor abandoned yet."""
        return self.state in (EarlyState.DIALLED, EarlyState.REPLAYED)

    def heard(self, src: Endpoint) -> EarlyStep | None:
        """A probe with the txid came from `src`: the first from the target replays."""
        if self.state is EarlyState.DIALLED and src == self.target:
            self.state = EarlyState.REPLAYED
            return EarlyStep(Step.REPLAY, self.target)
        return None

    def timer(self) -> float | None:
        return self._until if self.state is EarlyState.DIALLED else None

    def handle_timer(self, now: float) -> EarlyStep | None:
        """The target unheard at the window's end: abandoned."""
        if self.state is EarlyState.DIALLED and now >= self._until:
            self.state = EarlyState.ABANDONED
            return EarlyStep(Step.ABANDON, self.target)
        return None

    def resolve(self, dialled: Endpoint | None) -> EarlyStep | None:
        """Probing is over: this node dials on a pair to `dialled` (None: it dials on none,
        or the traversal closed). The target's pair uses the early dial; else it goes."""
        if not self.pending:
            return None
        if dialled == self.target:
            self.state = EarlyState.USED
            return None
        self.state = EarlyState.ABANDONED
        return EarlyStep(Step.ABANDON, self.target)
