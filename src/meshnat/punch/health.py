"""`PathHealth`: when to ping a punched path, and when it is dead; pure (takes `now`).

A punched path is held open by pings every `interval` seconds (its NAT mappings need
traffic). A ping that fails, or a hint from above that the path failed (`suspect`), starts
probing: pings `probe_interval` apart, and `dead_after` failures in a row declare the path dead
(`PathDead`); any answered ping makes it healthy again. A closed connection is dead at once.
The adapter (`punch/keepalive.py`) sends the pings, one at a time, and retires a dead path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from meshnat.config import require_in_range, require_positive


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """How often a punched path is pinged, and how many failures make it dead."""

    interval: float = 5.0
    """Seconds between pings on a healthy path (RFC 7675 consent checks every 5 s): under
    Linux conntrack's 30 s for a one-exchange UDP flow, and a dead path is seen in seconds."""

    ping_timeout: float = 2.5
    """Seconds one ping may take before it counts as failed."""

    probe_interval: float = 0.5
    """Seconds between pings once a path is suspect."""

    dead_after: int = 3
    """Failed pings in a row that make a path dead (one lost packet never does)."""

    def __post_init__(self) -> None:
        require_positive(self, "interval", "ping_timeout", "probe_interval")
        require_in_range(self, 1, 100, "dead_after")


class Health(Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class SendPing:
    """Ping the path once, within `timeout` seconds; report `answered` or `failed`."""

    timeout: float


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
        self.pings_answered = 0
        self._next_ping: float | None = now + config.interval
        self._in_flight = False
        self._actions: list[SendPing | PathDead] = []

    def get_timer(self) -> float | None:
        """When `handle_timer` is due next (None: waiting for a ping's outcome, or dead)."""
        return None if self._in_flight or self.state is Health.DEAD else self._next_ping

    def handle_timer(self, now: float) -> None:
        if self._next_ping is not None and now >= self._next_ping and not self._in_flight \
                and self.state is not Health.DEAD:
            self._in_flight, self._next_ping = True, None
            self._actions.append(SendPing(self.config.ping_timeout))

    def next_action(self) -> SendPing | PathDead | None:
        return self._actions.pop(0) if self._actions else None

    def answered(self, now: float) -> None:
        """The ping sent last was answered: the path is healthy."""
        if self.state is Health.DEAD:
            return
        self._in_flight = False
        self.state, self.failures = Health.HEALTHY, 0
        self.pings_answered += 1
        self._next_ping = now + self.config.interval

    def failed(self, now: float, reason: str) -> None:
        """The ping sent last failed (timed out, or the stream broke)."""
        if self.state is Health.DEAD:
            return
        self._in_flight = False
        self.failures += 1
        if self.failures >= self.config.dead_after:
            self._die(f"{self.failures} pings failed in a row, the last: {reason}")
            return
        self.state = Health.SUSPECT
        self._next_ping = now + self.config.probe_interval

    def suspect(self, now: float) -> None:
        """Something above saw the path fail (a stream that got no answer): probe it now."""
        if self.state is not Health.HEALTHY:
            return
        self.state = Health.SUSPECT
        if not self._in_flight:
            self._next_ping = now

    def closed(self) -> None:
        """The connection is closed (by either side): dead at once."""
        if self.state is not Health.DEAD:
            self._die("the connection closed", silent=False)

    def _die(self, reason: str, *, silent: bool = True) -> None:
        self.state, self._next_ping, self._in_flight = Health.DEAD, None, False
        self._actions.append(PathDead(reason, silent))
