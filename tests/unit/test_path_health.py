"""PathHealth: when a punched path is pinged, and when it is dead (pure, virtual time)."""

from __future__ import annotations

import pytest

from meshnat.errors import ConfigError
from meshnat.punch.health import Health, HealthConfig, PathDead, PathHealth, SendPing

CONFIG = HealthConfig(interval=5.0, ping_timeout=2.0, min_ping_timeout=1.0,
                      probe_interval=0.5, dead_after=3)


def due_ping(health: PathHealth) -> tuple[float, SendPing]:
    """Run the timer at its deadline; when, and the ping it asks for."""
    at = health.get_timer()
    assert at is not None
    health.handle_timer(at)
    action = health.next_action()
    assert isinstance(action, SendPing)
    return at, action


def learn_rtt(health: PathHealth, *rtts: float, times: int = 8) -> float:
    """Answer `times` keepalives after each of `rtts` in turn; the time of the last answer."""
    at = 0.0
    for n in range(times):
        at, ping = due_ping(health)
        at += rtts[n % len(rtts)]
        health.answered(at, ping.ping)
    return at


def test_a_healthy_path_is_pinged_every_interval() -> None:
    health = PathHealth(CONFIG, now=100.0)
    assert health.get_timer() == 105.0
    health.handle_timer(104.9)
    assert health.next_action() is None
    for n in range(1, 4):
        at, ping = due_ping(health)
        # the cap until a round trip is known, then (0.1 s paths) the floor
        assert ping == SendPing(CONFIG.ping_timeout if n == 1 else 1.0, n - 1)
        assert health.get_timer() == at + CONFIG.probe_interval  # unless answered by then
        health.answered(at + 0.1, ping.ping)
        assert health.get_timer() == pytest.approx(at + 0.1 + CONFIG.interval)
        assert (health.state, health.pings_answered) == (Health.HEALTHY, n)


def test_the_timeout_follows_the_round_trip_within_its_bounds() -> None:
    fast = PathHealth(CONFIG, now=0.0)
    learn_rtt(fast, 0.01)
    assert fast.srtt == pytest.approx(0.01) and fast.ping_timeout == CONFIG.min_ping_timeout
    slow = PathHealth(CONFIG, now=0.0)
    learn_rtt(slow, 0.3, 0.7)  # a jittery path: the variation counts four times
    assert slow.ping_timeout == pytest.approx(slow.srtt + 4 * slow.rttvar)
    assert CONFIG.min_ping_timeout < slow.ping_timeout < CONFIG.ping_timeout
    glacial = PathHealth(CONFIG, now=0.0)
    learn_rtt(glacial, 1.9, 2.0)
    assert glacial.ping_timeout == CONFIG.ping_timeout
    # and a slow healthy path is not probed after every keepalive: twice its round trip first
    at, _ = due_ping(slow)
    assert slow.get_timer() == pytest.approx(at + 2 * slow.srtt)


def test_one_lost_ping_only_makes_the_path_suspect_and_an_answer_heals_it() -> None:
    health = PathHealth(CONFIG, now=0.0)
    at, ping = due_ping(health)
    health.failed(at + 2.0, "timed out", ping.ping)
    timer = health.get_timer()
    assert health.state is Health.SUSPECT and timer is not None and timer <= at + 2.0  # now
    health.handle_timer(at + 2.0)
    ping = health.next_action()
    assert isinstance(ping, SendPing)
    health.answered(at + 2.1, ping.ping)
    assert (health.state, health.failures) == (Health.HEALTHY, 0)
    assert health.next_action() is None


def test_an_unanswered_ping_is_followed_by_probes_several_out_at_once() -> None:
    health = PathHealth(CONFIG, now=0.0)
    sent = [due_ping(health)[0] for _ in range(CONFIG.dead_after)]
    assert sent == [5.0, 5.5, 6.0]  # no answer: a probe every probe_interval
    assert health.state is Health.HEALTHY  # not suspect until one fails
    assert health.get_timer() is None  # dead_after out: wait for an outcome


def test_dead_after_that_many_failed_pings_with_none_answered() -> None:
    health = PathHealth(CONFIG, now=0.0)
    pings = [due_ping(health) for _ in range(CONFIG.dead_after)]
    for at, ping in pings:
        health.failed(at + ping.timeout, "timed out", ping.ping)
    assert health.state is Health.DEAD and health.get_timer() is None
    action = health.next_action()
    assert isinstance(action, PathDead) and "3 pings failed in a row" in action.reason
    assert action.silent
    assert health.next_action() is None
    health.answered(99.0, pings[-1][1].ping)  # a late answer does not revive it
    assert health.state is Health.DEAD


def test_a_ping_older_than_an_answered_one_failing_does_not_count() -> None:
    health = PathHealth(CONFIG, now=0.0)
    (at_a, a), (at_b, b) = due_ping(health), due_ping(health)
    health.answered(at_b + 0.1, b.ping)
    health.failed(at_a + a.timeout, "timed out", a.ping)
    assert (health.state, health.failures) == (Health.HEALTHY, 0)


def test_a_late_answer_heals_a_path_whose_newer_pings_failed() -> None:
    health = PathHealth(CONFIG, now=0.0)
    pings = [due_ping(health) for _ in range(CONFIG.dead_after)]
    for at, ping in pings[1:]:
        health.failed(at + 1.0, "timed out", ping.ping)
    health.answered(pings[0][0] + 1.9, pings[0][1].ping)  # within its 2 s
    assert (health.state, health.failures) == (Health.HEALTHY, 0)


def test_a_hint_probes_at_once_and_a_dead_path_is_found_two_seconds_later() -> None:
    health = PathHealth(CONFIG, now=0.0)
    last = learn_rtt(health, 0.01)  # a measured path: 1 s timeouts (the floor)
    hint = last + 1.0
    health.suspect(hint)
    assert health.get_timer() == hint and health.state is Health.SUSPECT
    pings = [due_ping(health) for _ in range(CONFIG.dead_after)]
    assert [at - hint for at, _ in pings] == [0.0, 0.5, 1.0]
    for at, ping in pings:
        assert ping.timeout == CONFIG.min_ping_timeout
        health.failed(at + ping.timeout, "timed out", ping.ping)
    assert isinstance(health.next_action(), PathDead)  # at hint + 2 s (sequential: 8 s)


def test_a_hint_soon_after_a_ping_waits_the_probe_interval() -> None:
    health = PathHealth(CONFIG, now=0.0)
    at, _ = due_ping(health)
    health.suspect(at + 0.1)
    assert health.get_timer() == at + CONFIG.probe_interval


def test_a_closed_connection_is_dead_at_once_and_only_once() -> None:
    health = PathHealth(CONFIG, now=0.0)
    health.closed()
    health.closed()
    assert health.next_action() == PathDead("the connection closed", silent=False)
    assert health.next_action() is None and health.get_timer() is None


def test_outcomes_of_unknown_pings_are_ignored() -> None:
    health = PathHealth(CONFIG, now=0.0)
    health.failed(1.0, "timed out", 7)
    health.answered(1.0, 8)
    assert (health.state, health.failures, health.pings_answered) == (Health.HEALTHY, 0, 0)


@pytest.mark.parametrize(("field", "value"), [("interval", 0.0), ("ping_timeout", -1.0),
                                              ("min_ping_timeout", 0.0),
                                              ("min_ping_timeout", 3.0),  # above the cap
                                              ("probe_interval", 0.0), ("dead_after", 0)])
def test_bad_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        HealthConfig(**{field: value})  # type: ignore[arg-type]
