"""Pure UDP punch session: probe the peer's candidates until one of its probes comes back.

Theory of operation. After the coordination exchange both sides run a session with the same
txid (learned over the authenticated coordination stream, so a third party cannot guess it).
Each round sends one `Probe` to every candidate (at most `max_candidates`), every
`probe_interval` seconds (ICE paces at 50 ms; DCUtR's QUIC punch every 10-200 ms). The first
probe from the peer names the working path: the session answers it with an `ack` probe (so the
peer hears us even if our earlier probes died at its NAT) and succeeds. Nothing is trusted
here beyond "this endpoint answers with our txid": the connection made over the path is then
authenticated by the QUIC/TLS or Noise handshake against the peer's id.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from meshnat.endpoint import Endpoint
from meshnat.errors import LocalProtocolError
from meshnat.punch.messages import Probe


@dataclass(frozen=True, slots=True)
class SendProbe:
    dst: Endpoint
    probe: Probe


@dataclass(frozen=True, slots=True)
class Heard:
    """The peer's probe arrived from `remote`: the path through both NATs is open."""

    remote: Endpoint
    elapsed: float
    probes_sent: int


@dataclass(frozen=True, slots=True)
class GaveUp:
    reason: str
    probes_sent: int


A = TypeVar("A")


class DeadlineSession(Generic[A]):
    """Clockwork shared by the punch sessions: a queue of actions, a tick every `interval`,
    a deadline, and exactly one final outcome. Subclasses say what a tick sends (`_tick`) and
    how giving up reads (`_give_up`)."""

    def __init__(self, *, interval: float, timeout: float) -> None:
        self._interval, self._timeout = interval, timeout
        self._actions: deque[A | GaveUp] = deque()
        self._started_at = self._next_tick = self._deadline = 0.0
        self._done = False

    def start(self, now: float) -> None:
        self._started_at, self._deadline = now, now + self._timeout
        self._tick(now)
        self._next_tick = now + self._interval

    def handle_timer(self, now: float) -> None:
        if self._done:
            return
        if now >= self._deadline:
            self._finish(self._give_up())
        elif now >= self._next_tick:
            self._tick(now)
            self._next_tick = now + self._interval

    def get_timer(self) -> float | None:
        return None if self._done else min(self._next_tick, self._deadline)

    def next_action(self) -> A | GaveUp | None:
        return self._actions.popleft() if self._actions else None

    def _finish(self, outcome: A | GaveUp) -> None:
        self._done = True
        self._actions.append(outcome)

    def _tick(self, now: float) -> None:
        raise NotImplementedError

    def _give_up(self) -> GaveUp:
        raise NotImplementedError


class UdpPunchSession(DeadlineSession[SendProbe | Heard]):
    """Driven by start(), receive_probe() and handle_timer(); every call takes `now`."""

    def __init__(self, txid: bytes, candidates: Sequence[Endpoint], *, probe_interval: float,
                 timeout: float, max_candidates: int = 8) -> None:
        if not candidates:
            raise LocalProtocolError("a punch needs at least one candidate endpoint")
        super().__init__(interval=probe_interval, timeout=timeout)
        self._txid = txid
        self._candidates = tuple(dict.fromkeys(candidates))[:max_candidates]
        self._probes_sent = 0

    @property
    def probes_sent(self) -> int:
        return self._probes_sent

    def receive_probe(self, probe: Probe, src: Endpoint, now: float) -> None:
        if self._done or not hmac.compare_digest(probe.txid, self._txid):
            return  # stray or forged: ignore
        self._send(src, ack=True)
        self._finish(Heard(src, now - self._started_at, self._probes_sent))

    def _tick(self, now: float) -> None:
        for dst in self._candidates:
            self._send(dst, ack=False)

    def _give_up(self) -> GaveUp:
        return GaveUp(f"no probe from the peer within {self._timeout:.1f}s", self._probes_sent)

    def _send(self, dst: Endpoint, *, ack: bool) -> None:
        self._actions.append(SendProbe(dst, Probe(self._txid, ack)))
        self._probes_sent += 1
