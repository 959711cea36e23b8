"""RepunchSchedule: when a peer is punched (again), with backoff and bounded attempts (pure)."""

from __future__ import annotations

import pytest

from meshnat.errors import ConfigError
from meshnat.punch.repunch import RepunchConfig, RepunchSchedule

CONFIG = RepunchConfig(attempts=3, backoff=2.0, max_backoff=5.0, stable_after=60.0)


def test_the_first_punch_is_due_at_once_and_failures_back_off_until_it_gives_up() -> None:
    schedule = RepunchSchedule(CONFIG, now=10.0)
    assert schedule.get_timer() == 10.0
    assert not schedule.start(9.9) and schedule.start(10.0)
    assert not schedule.start(10.0)  # one punch at a time
    schedule.failed(11.0)
    assert schedule.get_timer() == 13.0  # backoff
    assert schedule.start(13.0)
    schedule.failed(14.0)
    assert schedule.get_timer() == 18.0  # doubled (2 * 2 = 4 < max 5)
    assert schedule.start(18.0)
    schedule.failed(19.0)
    assert schedule.gave_up and schedule.get_timer() is None and not schedule.start(99.0)
    assert (schedule.started, schedule.total) == (3, 3)


def test_the_backoff_is_capped() -> None:
    schedule = RepunchSchedule(RepunchConfig(attempts=10, backoff=2.0, max_backoff=5.0), 0.0)
    delays = []
    now = 0.0
    for _ in range(5):
        assert schedule.start(now)
        schedule.failed(now)
        at = schedule.get_timer()
        assert at is not None
        delays.append(at - now)
        now = at
    assert delays == [2.0, 4.0, 5.0, 5.0, 5.0]


def test_a_lost_path_is_punched_again_at_once_within_the_same_attempts() -> None:
    schedule = RepunchSchedule(CONFIG, now=0.0)
    assert schedule.start(0.0)
    schedule.punched(1.0)
    assert schedule.get_timer() is None and not schedule.gave_up
    schedule.lost(20.0)  # it lived 19 s < stable_after: the same episode
    assert schedule.get_timer() == 20.0 and schedule.started == 1
    assert schedule.start(20.0)
    schedule.punched(21.0)
    schedule.lost(22.0)
    assert schedule.start(22.0)
    schedule.punched(23.0)
    schedule.lost(24.0)  # three punches in the episode, each path died young
    assert schedule.gave_up and schedule.get_timer() is None
    assert schedule.total == 3


def test_a_path_that_lived_long_enough_starts_a_fresh_episode() -> None:
    schedule = RepunchSchedule(CONFIG, now=0.0)
    for at in (0.0, 100.0, 200.0, 300.0, 400.0):  # more punches than attempts, spread out
        assert schedule.start(at)
        schedule.punched(at + 1.0)
        schedule.lost(at + 1.0 + CONFIG.stable_after)
        assert schedule.started == 0 and not schedule.gave_up
    assert schedule.total == 5


def test_losing_a_path_that_was_never_punched_changes_nothing() -> None:
    schedule = RepunchSchedule(CONFIG, now=0.0)
    schedule.lost(5.0)
    assert schedule.get_timer() == 0.0 and schedule.started == 0


@pytest.mark.parametrize(("field", "value"), [("attempts", 0), ("attempts", 11),
                                              ("backoff", 0.0), ("max_backoff", -1.0),
                                              ("stable_after", 0.0)])
def test_bad_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError):
        RepunchConfig(**{field: value})  # type: ignore[arg-type]
