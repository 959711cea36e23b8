"""When to send a port-mapping request again, and when a gateway has lost its mappings (pure).

- Retransmission: NAT-PMP sends at 250 ms and doubles the wait, 9 attempts in all (RFC 6886
  §3.1); PCP waits (1+RAND)·3 s, doubling up to 1024 s with RAND in [-0.1, 0.1] (RFC 6887
  §8.1.1: IRT 3 s, MRT 1024 s). A schedule here always ends after `attempts` sends.
- Epoch: every response carries the gateway's seconds since its state was reset. RFC 6887
  §8.5's check (which also covers RFC 6886 §3.6's rule): the state was lost if the epoch went
  back by more than a second, or if the gateway's and our clock moved apart by more than
  2 s + 1/16 of the time between the two responses. The client must then map again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Schedule:
    """A retransmission schedule: the first wait, its cap, the jitter share, the sends."""

    initial: float
    maximum: float
    jitter: float
    attempts: int


NATPMP_SCHEDULE = Schedule(initial=0.25, maximum=64.0, jitter=0.0, attempts=9)
PCP_SCHEDULE = Schedule(initial=3.0, maximum=1024.0, jitter=0.1, attempts=4)
"""RFC 6887 retransmits forever (MRC 0); a mapper gives up after 4 sends (~45 s) and tries
again later, so a dead gateway does not hold a mapping attempt open."""


class Retransmission:
    """The sends of one request: `due(now)` says when to (re)send it, `gave_up` when not."""

    def __init__(self, schedule: Schedule, now: float, rand: Callable[[], float]) -> None:
        self._schedule, self._rand = schedule, rand
        self._next: float = now
        self._wait = 0.0
        self.sent = 0

    def _jittered(self, base: float) -> float:
        return base * (1 + self._schedule.jitter * (2 * self._rand() - 1))

    def due(self, now: float) -> bool:
        """True when the request is to be sent now (and counts that send)."""
        if self.sent >= self._schedule.attempts or now < self._next:
            return False
        base = self._schedule.initial if self.sent == 0 else self._wait * 2
        self._wait = min(self._jittered(base), self._schedule.maximum)
        self._next = now + self._wait
        self.sent += 1
        return True

    def gave_up(self, now: float) -> bool:
        """Every send is out and the last one's wait has passed."""
        return self.sent >= self._schedule.attempts and now >= self._next

    def get_timer(self) -> float:
        return self._next


class EpochTracker:
    """Tells from successive epochs whether the gateway lost its state (rebooted)."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def observe(self, epoch: int, now: float) -> bool:
        """Record `epoch` received at `now`; True if the gateway lost its state since the
        previous response (RFC 6887 §8.5)."""
        last, self._last = self._last, (now, epoch)
        if last is None:
            return False
        client_then, server_then = last
        if epoch + 1 < server_then:
            return True
        client_delta, server_delta = now - client_then, epoch - server_then
        return (client_delta + 2 < server_delta - server_delta / 16
                or server_delta + 2 < client_delta - client_delta / 16)
