"""`PathHealth`: when to ping a punched path, and when it is dead; pure (takes `now`).

A punched path is held open by a ping every `interval` seconds (its NAT mappings need
traffic). The path is *probed* (a ping every `probe_interval`, several out at once) while a
ping has gone unanswered for `probe_interval` (or twice the path's round trip, if longer),
after a ping failed, and after a hint from above that the path failed (`suspect`).
`dead_after` failed pings with no answer since make it dead (`PathDead`); any answer makes it
healthy again. A closed connection is dead at once. The adapter (`punch/keepalive.py`) sends
each ping it is asked for, concurrently, and reports its outcome.

Each ping's timeout follows the path's measured round trip (RFC 6298: smoothed RTT plus four
times its variation), between `min_ping_timeout` and `ping_timeout` (the latter until the
first answer). So a dead path is found `(dead_after - 1) * probe_interval` plus one timeout
after the probing starts: about 3 s after a hint at the defaults, at most `interval` more
without one, where sequential pings of 2.5 s took 8.5 and up to 13.5 s. Loss does not kill a
path: a ping fails only if no transport retransmission gets it through within its timeout
(1 s at least: RFC 6298's minimum RTO; a TCP segment lost twice in a row still makes it), and
`dead_after` pings sent `probe_interval` apart must all fail. What does kill one is silence:
an outage covering all of them and the last one's timeout, about 2.5 s or more at the defaults
(shorter ones are survived).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum

from meshnat.config import require_in_range, require_positive
from meshnat.errors import ConfigError

RTT_GAIN, RTTVAR_GAIN = 1 / 8, 1 / 4
"""RFC 6298's smoothing of round-trip samples (alpha, beta)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """How often a punched path is pinged, and how many failures make it dead."""

    interval: float = 5.0
    """Seconds between pings on a healthy path (RFC 7675 consent checks every 5 s): under
    Linux conntrack's 30 s for a one-exchange UDP flow, and a dead path is seen in seconds."""

    ping_timeout: float = 2.5
    """The most seconds one ping may take before it counts as failed: the timeout until the
    path's round trip is measured, and the cap of the one measured from it."""

    min_ping_timeout: float = 1.0
    """The fewest seconds one ping may take before it counts as failed, however short the
    path's round trip (RFC 6298's minimum retransmission timeout)."""

    probe_interval: float = 1.0
    """Seconds between pings while the path is probed (a ping unanswered for that long, a
    failed one, or a hint); at most `dead_after` are out at once. The `dead_after` pings that
    kill a path span `(dead_after - 1) * probe_interval` seconds: an outage shorter than that
    (a Wi-Fi roam, say) leaves at least the last one through."""

    dead_after: int = 3
    """Failed pings, none answered since, that make a path dead (one lost packet never does)."""

    def __post_init__(self) -> None:
        require_positive(self, "interval", "ping_timeout", "min_ping_timeout", "probe_interval")
        require_in_range(self, 1, 100, "dead_after")
        if self.min_ping_timeout > self.ping_timeout:
            raise ConfigError(f"min_ping_timeout must not exceed ping_timeout "
                              f"({self.min_ping_timeout} > {self.ping_timeout})")


class Health(Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class SendPing:
    """Ping the path once, within `timeout` seconds; report `answered` or `failed` with `ping`."""

    timeout: float
    ping: int = 0
    """Which ping this is (numbered from 0), for its outcome."""


@dataclass(frozen=True, slots=True)
class PathDead:
    """The path is dead: retire it."""

    reason: str
    silent: bool = True
    """True when pings found it dead; False when its connection was closed (by either end)."""


class PathHealth:
    """One punched path's liveness, from the pings' outcomes and hints from above."""

    def __init__(self, config: HealthConfig, now: float) -> None:
        self.config = config
        self.state = Health.HEALTHY
        self.failures = 0
        """Pings failed since the last answered one was sent."""
        self.pings_answered = 0
        self.srtt: float | None = None
        """Smoothed round trip of the answered pings, seconds (None before the first)."""
        self.rttvar = 0.0
        self._next_ping: float | None = now + config.interval
        self._out: dict[int, float] = {}  # ping -> when it was sent
        self._last_sent: float | None = None
        self._alive_at: float | None = None  # when the newest answered ping was sent
        self._ids = itertools.count()
        self._actions: list[SendPing | PathDead] = []

    @property
    def ping_timeout(self) -> float:
        """Seconds the next ping may take: from the measured round trip, within the bounds."""
        if self.srtt is None:
            return self.config.ping_timeout
        return min(self.config.ping_timeout,
                   max(self.config.min_ping_timeout, self.srtt + 4 * self.rttvar))

    def get_timer(self) -> float | None:
        """When `handle_timer` is due next (None: enough pings are out, or dead)."""
        if self.state is Health.DEAD or len(self._out) >= self.config.dead_after:
            return None
        return self._next_ping

    def handle_timer(self, now: float) -> None:
        due = self.get_timer()
        if due is None or now < due:
            return
        ping = next(self._ids)
        self._out[ping] = self._last_sent = now
        self._actions.append(SendPing(self.ping_timeout, ping))
        # probe again if this one is not answered by then (an answer pushes it to `interval`):
        # on a healthy path that is twice its round trip, so a slow path is not probed always
        wait = self.config.probe_interval
        if self.state is Health.HEALTHY and self.srtt is not None:
            wait = max(wait, 2 * self.srtt)
        self._next_ping = now + wait

    def next_action(self) -> SendPing | PathDead | None:
        return self._actions.pop(0) if self._actions else None

    def answered(self, now: float, ping: int = 0) -> None:
        """Ping `ping` was answered: the path is healthy."""
        sent = self._out.pop(ping, None)
        if self.state is Health.DEAD or sent is None:
            return
        sample = now - sent
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar += RTTVAR_GAIN * (abs(self.srtt - sample) - self.rttvar)
            self.srtt += RTT_GAIN * (sample - self.srtt)
        self._alive_at = sent if self._alive_at is None else max(self._alive_at, sent)
        self.state, self.failures = Health.HEALTHY, 0
        self.pings_answered += 1
        self._next_ping = now + self.config.interval

    def failed(self, now: float, reason: str, ping: int = 0) -> None:
        """Ping `ping` failed (timed out, or its stream broke)."""
        sent = self._out.pop(ping, None)
        if self.state is Health.DEAD or sent is None:
            return
        if self._alive_at is not None and sent < self._alive_at:
            return  # a ping sent after it was answered: the path lived on
        self.failures += 1
        if self.failures >= self.config.dead_after:
            self._die(f"{self.failures} pings failed in a row, the last: {reason}")
            return
        self._probe(now)

    def suspect(self, now: float) -> None:
        """Something above saw the path fail (a stream that got no answer): probe it now."""
        if self.state is Health.HEALTHY:
            self._probe(now)

    def closed(self) -> None:
        """The connection is closed (by either side): dead at once."""
        if self.state is not Health.DEAD:
            self._die("the connection closed", silent=False)

    def _probe(self, now: float) -> None:
        """Suspect: the next ping now, or `probe_interval` after the last one if sooner."""
        self.state = Health.SUSPECT
        soonest = now if self._last_sent is None else max(
            now, self._last_sent + self.config.probe_interval)
        self._next_ping = soonest if self._next_ping is None else min(self._next_ping, soonest)

    def _die(self, reason: str, *, silent: bool = True) -> None:
        self.state, self._next_ping = Health.DEAD, None
        self._out.clear()
        self._actions.append(PathDead(reason, silent))
