"""PathHealth under loss patterns, in virtual time: no false deaths, and dead paths found fast.

A ping is modelled as it rides a reliable stream: two packets (the ping and its answer), each
sent again after a retransmission timeout (at least 200 ms, Linux TCP's floor, or twice the
round trip; doubling each time) until it gets through. Loss patterns are random loss at a
given rate, bursts of total loss on top, and outages; a dead path loses everything from some
moment on. Each run is seeded (one `random.Random`).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from meshnat.punch.health import HealthConfig, PathDead, PathHealth, SendPing

DEFAULTS = HealthConfig()
Loss = Callable[[float, random.Random], bool]
"""Is a packet sent at this time lost?"""


def random_loss(rate: float) -> Loss:
    return lambda _t, rng: rng.random() < rate


def outages(every: float, length: float, background: float = 0.0, *,
            seed: int = 0) -> Loss:
    """Total loss for `length` s at random moments, on average `every` s apart (never closer
    than 10 s, so outages do not merge into longer ones), plus `background` random loss."""
    rng, starts, t = random.Random(seed), [], 0.0
    while t < 10 * 3600:
        t += length + 10 + rng.expovariate(1 / max(every - length - 10, 1))
        starts.append(t)

    def lost(t: float, r: random.Random) -> bool:
        i = _last_at_or_before(starts, t)
        return (i >= 0 and t < starts[i] + length) or r.random() < background
    return lost


def _last_at_or_before(starts: list[float], t: float) -> int:
    lo, hi = 0, len(starts)
    while lo < hi:
        mid = (lo + hi) // 2
        if starts[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def dead_from(moment: float, before: Loss) -> Loss:
    return lambda t, rng: t >= moment or before(t, rng)


@dataclass
class Path:
    rtt: float
    loss: Loss

    def latency(self, sent: float, rng: random.Random) -> float:
        """Seconds a ping sent at `sent` takes to be answered (inf if never)."""
        t = sent
        for _ in range(2):  # the ping, then its answer
            rto = max(0.2, 2 * self.rtt)
            while self.loss(t, rng):
                t += rto
                rto *= 2
                if t - sent > 120:
                    return math.inf
            t += self.rtt / 2
        return t - sent


def run(path: Path, *, until: float, seed: int, config: HealthConfig = DEFAULTS,
        hint_at: float | None = None) -> float | None:
    """Drive a PathHealth over `path` until `until` (virtual seconds); when it declared the
    path dead, or None. `hint_at`: the application suspects the path then."""
    rng = random.Random(seed)
    health = PathHealth(config, 0.0)
    outcomes: list[tuple[float, int, bool]] = []  # (when, ping, answered)
    now = 0.0
    while now < until:
        while (action := health.next_action()) is not None:
            if isinstance(action, PathDead):
                return now
            assert isinstance(action, SendPing)
            took = path.latency(now, rng)
            answered = took <= action.timeout
            heapq.heappush(outcomes, (now + (took if answered else action.timeout),
                                      action.ping, answered))
        timer = health.get_timer()
        events = [t for t in (timer, outcomes[0][0] if outcomes else None, hint_at)
                  if t is not None]
        now = max(now, min(events))
        if hint_at is not None and now >= hint_at:
            health.suspect(now)
            hint_at = None
        elif outcomes and outcomes[0][0] <= now:
            _, ping, answered = heapq.heappop(outcomes)
            if answered:
                health.answered(now, ping)
            else:
                health.failed(now, "timed out", ping)
        else:
            health.handle_timer(now)
    return None


LIVE = {
    "2% loss": random_loss(0.02),
    "5% loss": random_loss(0.05),
    "10% loss": random_loss(0.10),
    "0.3 s bursts every 10 s, 1% loss": outages(10, 0.3, 0.01),
    "1 s outages every 60 s, 2% loss": outages(60, 1.0, 0.02),
    "1.5 s outages every 60 s": outages(60, 1.5),
}


@pytest.mark.parametrize("rtt", [0.001, 0.08, 0.3])
@pytest.mark.parametrize("pattern", list(LIVE))
def test_loss_never_kills_a_live_path(pattern: str, rtt: float) -> None:
    for seed in range(3):  # three virtual hours each
        assert run(Path(rtt, LIVE[pattern]), until=3600, seed=seed) is None, (pattern, seed)


def test_an_outage_of_four_seconds_is_taken_for_a_dead_path() -> None:
    # the other side of the bound: silence this long (when pings land in it) is what a dead
    # path looks like
    assert run(Path(0.08, outages(300, 4.0)), until=3600, seed=0) is not None


@pytest.mark.parametrize("rtt", [0.001, 0.08])
def test_a_dead_path_is_found_within_nine_seconds_and_three_after_a_hint(rtt: float) -> None:
    rng = random.Random(5)
    found, hinted = [], []
    for seed in range(50):
        died = 60 + 30 * rng.random()
        path = Path(rtt, dead_from(died, random_loss(0.02)))
        dead_at = run(path, until=died + 60, seed=seed)
        assert dead_at is not None and dead_at >= died
        found.append(dead_at - died)
        hint = died + 0.3  # the application's own stream got no answer
        hinted_at = run(path, until=died + 60, seed=seed, hint_at=hint)
        assert hinted_at is not None
        hinted.append(hinted_at - hint)
    # a keepalive within `interval`, two probes after it, the last one's timeout (1 s, a
    # little more on a lossy path, whose round trips vary)
    spread = (DEFAULTS.dead_after - 1) * DEFAULTS.probe_interval
    assert max(found) <= DEFAULTS.interval + spread + 1.5
    assert sorted(found)[len(found) // 2] <= 6.0  # sequential 2.5 s pings: 8 to 13.5 s
    # a ping just before the hint puts the first probe off by up to `probe_interval`
    assert max(hinted) <= DEFAULTS.probe_interval + spread + 1.5  # sequential: 8.5 s
    assert sorted(hinted)[len(hinted) // 2] <= spread + 1.1
