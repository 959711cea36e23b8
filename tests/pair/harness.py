"""The pair-tier driver: pure cores wired through `tests.support.natsim` on virtual time.

Any core joins through a small adapter (`PairCore`): the sockets it listens on, `start(now)`,
`feed(local, src, payload, now)`, `handle_timer(now)`, `get_timer()` and `drain()`, which
returns `Outgoing` datagrams and, once, `Finished(outcome)`. `run()` is the one loop: it jumps
virtual time to the earliest of the cores' timers, their start times and the next arrival,
delivers, fires timers, drains and sends, and records a `Trace` per core. It keeps feeding and
ticking a core after it finished, so "no action after finishing" is checked, not assumed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshnat.endpoint import Endpoint
from tests.support.natsim import SimNet


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A datagram a core wants sent from its socket `src`."""

    src: Endpoint
    dst: Endpoint
    payload: bytes


@dataclass(frozen=True, slots=True)
class Finished:
    """The core's final outcome (whatever type the core uses)."""

    outcome: object


class PairCore(Protocol):
    @property
    def sockets(self) -> frozenset[Endpoint]: ...
    def start(self, now: float) -> None: ...
    def feed(self, local: Endpoint, src: Endpoint, payload: bytes, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def get_timer(self) -> float | None: ...
    def drain(self) -> list[Outgoing | Finished]: ...


@dataclass
class Trace:
    """What one core did in a run."""

    started: float
    sent: list[tuple[float, Outgoing]] = field(default_factory=list)
    received: list[tuple[float, Endpoint]] = field(default_factory=list)
    """When each datagram was fed to the core, and its source."""
    outcomes: list[tuple[float, object]] = field(default_factory=list)
    after_finish: list[tuple[float, Outgoing | Finished]] = field(default_factory=list)
    """Anything drained after the first outcome: must stay empty."""
    foreign_sources: list[Endpoint] = field(default_factory=list)
    """Datagrams the core asked to send from a socket that is not its own."""

    @property
    def outcome(self) -> object | None:
        return self.outcomes[0][1] if self.outcomes else None

    @property
    def finished_at(self) -> float | None:
        return self.outcomes[0][0] if self.outcomes else None


@dataclass(frozen=True, slots=True)
class Run:
    traces: tuple[Trace, ...]
    end: float
    """Virtual time the run stopped at."""
    unclaimed: int
    """Datagrams that arrived at an endpoint no core listens on."""


def run(net: SimNet, cores: Sequence[PairCore], starts: Sequence[float], *, until: float,
        max_steps: int = 200_000) -> Run:
    """Drive `cores` (core i starting at `starts[i]`) until nothing is left to do before
    `until`; every core's outcome and datagrams are in the returned traces."""
    traces = tuple(Trace(started=s) for s in starts)
    owner = {ep: i for i, core in enumerate(cores) for ep in core.sockets}
    started = [False] * len(cores)
    unclaimed = 0

    def drain(i: int, now: float) -> None:
        trace = traces[i]
        for item in cores[i].drain():
            if trace.outcomes:
                trace.after_finish.append((now, item))
            if isinstance(item, Finished):
                trace.outcomes.append((now, item.outcome))
                continue
            if item.src not in cores[i].sockets:
                trace.foreign_sources.append(item.src)
                continue
            trace.sent.append((now, item))
            net.send(item.src, item.dst, item.payload, now)

    now = net.now
    for _ in range(max_steps):
        due = [core.get_timer() if done else start
               for core, start, done in zip(cores, starts, started, strict=True)]
        upcoming = [t for t in due if t is not None]
        if (arrival := net.next_delivery_time()) is not None:
            upcoming.append(arrival)
        now = max(now, min(upcoming, default=math.inf))
        if now > until:
            return Run(traces, until, unclaimed)
        for dst, src, payload in net.deliver_until(now):
            i = owner.get(dst, -1)
            if i < 0 or not started[i]:
                unclaimed += 1
                continue
            traces[i].received.append((now, src))
            cores[i].feed(dst, src, payload, now)
            drain(i, now)
        for i, core in enumerate(cores):
            if (t := due[i]) is None or t > now:
                continue
            if started[i]:
                core.handle_timer(now)  # a core that finished meanwhile must do nothing
            else:
                started[i] = True
                core.start(now)
            drain(i, now)
    raise AssertionError(f"pair run still busy after {max_steps} steps at t={now}")
