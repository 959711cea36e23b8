"""PathHealth: when a punched path is pinged, and when it is dead (pure, virtual time)."""

from __future__ import annotations

import pytest

from meshnat.errors import ConfigError
from meshnat.punch.health import Health, HealthConfig, PathDead, PathHealth, SendPing

CONFIG = HealthConfig(interval=5.0, ping_timeout=2.0, probe_interval=0.5, dead_after=3)


def due_ping(health: PathHealth) -> float:
    """Run the timer at its deadline; the ping it asks for."""
    at = health.get_timer()
    assert at is not None
    health.handle_timer(at)
    assert health.next_action() == SendPing(CONFIG.ping_timeout)
    assert health.get_timer() is None  # one ping at a time
    return at


def test_a_healthy_path_is_pinged_every_interval() -> None:
    health = PathHealth(CONFIG, now=100.0)
    assert health.get_timer() == 105.0
    health.handle_timer(104.9)
    assert health.next_action() is None
    for n in range(1, 4):
        at = due_ping(health)
        health.answered(at + 0.1)
        assert health.get_timer() == pytest.approx(at + 0.1 + CONFIG.interval)
        assert (health.state, health.pings_answered) == (Health.HEALTHY, n)


def test_one_lost_ping_only_makes_the_path_suspect_and_an_answer_heals_it() -> None:
    health = PathHealth(CONFIG, now=0.0)
    at = due_ping(health)
    health.failed(at + 2.0, "timed out")
    assert health.state is Health.SUSPECT and health.get_timer() == at + 2.5  # probing
    at = due_ping(health)
    health.answered(at + 0.1)
    assert (health.state, health.failures) == (Health.HEALTHY, 0)
    assert health.next_action() is None


def test_dead_after_that_many_failed_pings_in_a_row() -> None:
    health = PathHealth(CONFIG, now=0.0)
    for _ in range(CONFIG.dead_after):
        at = due_ping(health)
        health.failed(at + 2.0, "timed out")
    assert health.state is Health.DEAD and health.get_timer() is None
    action = health.next_action()
    assert isinstance(action, PathDead) and "3 pings failed in a row" in action.reason
    assert action.silent
    assert health.next_action() is None
    health.answered(99.0)  # a late answer does not revive it
    assert health.state is Health.DEAD


def test_a_suspect_hint_pings_at_once_and_three_failures_take_the_probe_interval() -> None:
    health = PathHealth(CONFIG, now=0.0)
    health.suspect(1.0)
    assert health.get_timer() == 1.0 and health.state is Health.SUSPECT
    failed_at = []
    for _ in range(CONFIG.dead_after):
        at = due_ping(health)
        failed_at.append(at)
        health.failed(at + CONFIG.ping_timeout, "timed out")
    assert failed_at == [1.0, 3.5, 6.0]  # dead 8 s after the hint, not after intervals
    assert isinstance(health.next_action(), PathDead)


def test_a_hint_while_a_ping_is_out_waits_for_its_outcome() -> None:
    health = PathHealth(CONFIG, now=0.0)
    due_ping(health)
    health.suspect(5.5)
    assert health.get_timer() is None and health.next_action() is None


def test_a_closed_connection_is_dead_at_once_and_only_once() -> None:
    health = PathHealth(CONFIG, now=0.0)
    health.closed()
    health.closed()
    assert health.next_action() == PathDead("the connection closed", silent=False)
    assert health.next_action() is None and health.get_timer() is None


@pytest.mark.parametrize(("field", "value"), [("interval", 0.0), ("ping_timeout", -1.0),
                                              ("probe_interval", 0.0), ("dead_after", 0)])
def test_bad_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError):
        HealthConfig(**{field: value})  # type: ignore[arg-type]
