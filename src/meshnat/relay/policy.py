"""Pure relay choice: which relays to reserve on, best first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RelayCandidate:
    """A relay as measured just now: `rtt` is None when it could not be reached."""

    name: str
    rtt: float | None
    public: bool | None = None
    """Whether checks found it publicly reachable (None: not checked)."""


def rank_relays(candidates: Sequence[RelayCandidate]) -> list[RelayCandidate]:
    """Reachable relays only: those found public first, then unchecked, then the rest; within
    each, lower round-trip time first (ties keep the caller's order)."""
    reachable = [c for c in candidates if c.rtt is not None]
    order = {True: 0, None: 1, False: 2}
    return sorted(reachable, key=lambda c: (order[c.public], c.rtt))
