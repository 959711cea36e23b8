"""`RepunchSchedule`: when to punch a peer's relayed path (again); pure (takes `now`).

One schedule per peer, owned by the Connector. The first punch is due at once; a failed one is
tried again after a backoff that doubles (`backoff`, `2 * backoff`, ... at most `max_backoff`),
and after `attempts` punches the path stays relayed. A punched path that dies (`lost`) is due
for a punch at once, once the relayed path stands again; the punches of such an episode count
against the same `attempts` unless the lost path had lived `stable_after` seconds, so a peer
whose punched paths keep dying gets a bounded number of punches, not one per death.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnat.config import require_in_range, require_positive


@dataclass(frozen=True, slots=True, kw_only=True)
class RepunchConfig:
    """How often the Connector punches one peer."""

    attempts: int = 3
    """Punches tried in one episode (the first upgrade, or after a lost path) at most."""

    backoff: float = 2.0
    """Seconds before the punch after a failed one; doubled for each further failure."""

    max_backoff: float = 30.0
    """Seconds between punches at most."""

    stable_after: float = 60.0
    """Seconds a punched path must have lived for its loss to start a fresh episode."""

    def __post_init__(self) -> None:
        require_in_range(self, 1, 10, "attempts")
        require_positive(self, "backoff", "max_backoff", "stable_after")


class RepunchSchedule:
    """When the next punch to one peer is due, and when to stop trying."""

    def __init__(self, config: RepunchConfig, now: float) -> None:
        self.config = config
        self.started = 0
        """Punches started in this episode."""
        self.total = 0
        """Punches started over the schedule's life."""
        self.gave_up = False
        """True once `attempts` punches of this episode failed: the path stays relayed."""
        self._due: float | None = now
        self._punched_at: float | None = None

    def get_timer(self) -> float | None:
        """When the next punch is due (None: punched now, or given up)."""
        return self._due

    def start(self, now: float) -> bool:
        """A punch is about to start; False (start none) if none is due yet."""
        if self._due is None or now < self._due:
            return False
        self._due = None
        self.started += 1
        self.total += 1
        return True

    def failed(self, now: float) -> None:
        """The punch started last failed (or the relayed path it needed could not be had)."""
        self._punched_at = None
        if self.started >= self.config.attempts:
            self.gave_up = True
            return
        delay = self.config.backoff * 2 ** (self.started - 1)
        self._due = now + min(delay, self.config.max_backoff)

    def punched(self, now: float) -> None:
        """The punch started last opened a direct path."""
        self._punched_at, self._due = now, None

    def lost(self, now: float) -> None:
        """The punched path died: punch again at once, within this episode's attempts."""
        if self._punched_at is None:
            return  # not punched: nothing was lost
        if now - self._punched_at >= self.config.stable_after:
            self.started = 0  # it lived long enough: a fresh episode
        self._punched_at = None
        if self.started < self.config.attempts:
            self._due = now
        else:
            self.gave_up = True
