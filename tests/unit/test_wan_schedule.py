"""The lab WAN emulator's pure core: delays add up per pipe, pipes never reorder, loss is seeded."""

from __future__ import annotations

import pytest

from tests.support.wan import Wan, WanSchedule

UP, DOWN, PLAIN = 3, 5, 9  # bridge-port ifindexes: two emulated uplinks and a plain port


def schedule(seed: int = 1) -> WanSchedule:
    s = WanSchedule(seed)
    s.add_uplink(UP, Wan(delay=0.020, jitter=0.005, loss=0.1))
    s.add_uplink(DOWN, Wan(delay=0.010))
    return s


def test_a_packet_crosses_the_up_pipe_it_enters_and_the_down_pipe_it_leaves() -> None:
    s = WanSchedule(1)
    s.add_uplink(UP, Wan(delay=0.020))
    s.add_uplink(DOWN, Wan(delay=0.010))
    assert s.release_time(UP, DOWN, 100.0) == pytest.approx(100.030)
    assert s.release_time(DOWN, PLAIN, 100.0) == pytest.approx(100.010)
    assert s.release_time(PLAIN, PLAIN, 100.0) == 100.0


def test_release_times_never_go_backwards_through_a_jittery_pipe() -> None:
    s = schedule()
    times = [s.release_time(UP, PLAIN, 100.0 + i * 1e-4) for i in range(5000)]
    kept = [t for t in times if t is not None]
    assert kept == sorted(kept)
    assert all(t >= 100.0 + 0.015 for t in kept)


def test_loss_is_the_configured_share_and_repeats_with_the_seed() -> None:
    runs = [[s.release_time(UP, PLAIN, float(i)) is None for i in range(20000)]
            for s in (schedule(1), schedule(1), schedule(2))]
    assert runs[0] == runs[1] != runs[2]
    share, sd = sum(runs[0]) / 20000, (0.1 * 0.9 / 20000) ** 0.5
    assert abs(share - 0.1) < 6 * sd


@pytest.mark.parametrize("bad", [dict(delay=-1.0), dict(delay=0.01, jitter=0.02),
                                 dict(loss=1.0), dict(loss=-0.1)])
def test_impossible_parameters_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Wan(**bad)
