"""What the birthday-probing sessions share: their actions and a deadline-driven base.

A session is pure: driven by start(), receive_probe() and handle_timer(), each taking `now`,
it queues actions (`SendProbe`) and ends with `Heard` or `GaveUp`. Nothing is trusted beyond
"this endpoint answers with our txid" (learned over the authenticated coordination stream):
the connection made over the path is authenticated by QUIC/TLS against the peer's id.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from meshnat.endpoint import Endpoint
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
