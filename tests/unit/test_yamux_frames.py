"""The pure Yamux core: frame parsing from arbitrary pieces, strict headers, receive windows."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnat._libp2p.yamux_frames import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    INITIAL_WINDOW,
    MAX_WINDOW,
    PING,
    SYN,
    WINDOW_UPDATE,
    Frame,
    FrameParser,
    ReceiveWindow,
    WindowBudget,
    YamuxProtocolError,
    encode,
)
from meshnat.errors import RemoteProtocolError

FRAMES = [
    Frame(WINDOW_UPDATE, SYN, 1, 0),
    Frame(DATA, 0, 1, 5, b"hello"),
    Frame(PING, SYN, 0, 7),
    Frame(DATA, FIN, 1, 70_000, bytes(range(256)) * 273 + bytes(112)),
    Frame(WINDOW_UPDATE, ACK, 2, 1 << 20),
    Frame(GO_AWAY, 0, 0, 0),
]


def wire(frames: list[Frame]) -> bytes:
    return b"".join(encode(f.type, f.flags, f.stream_id, f.length) + f.payload for f in frames)


@given(st.lists(st.integers(min_value=1, max_value=9000), max_size=40))
def test_frames_come_out_whole_and_in_order_however_the_bytes_are_cut(cuts: list[int]) -> None:
    data, parser, out, at = wire(FRAMES), FrameParser(), list[Frame](), 0
    for size in cuts:
        out += parser.feed(data[at:at + size])
        at += size
    out += parser.feed(data[at:])
    assert out == FRAMES
    assert parser.buffered == 0


@pytest.mark.parametrize("header", [
    bytes([1, DATA, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),  # version 1
    bytes([0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),  # type 4
    encode(DATA, 0, 1, MAX_WINDOW + 1),  # larger than any window
])
def test_a_bad_header_is_a_remote_protocol_error(header: bytes) -> None:
    with pytest.raises(YamuxProtocolError) as caught:
        FrameParser().feed(header)
    assert isinstance(caught.value, RemoteProtocolError)


def fresh_window() -> ReceiveWindow:
    return ReceiveWindow(now=0.0, budget=WindowBudget())


def test_data_past_the_window_is_refused() -> None:
    window = fresh_window()
    window.receive(INITIAL_WINDOW)
    with pytest.raises(YamuxProtocolError):
        window.receive(1)


def test_credit_is_topped_up_once_half_the_window_was_read() -> None:
    window = fresh_window()
    window.receive(INITIAL_WINDOW // 2 - 1)
    assert window.update(buffered=0, now=10.0, rtt=0.001) == 0
    window.receive(1)
    assert window.update(buffered=0, now=20.0, rtt=0.001) == INITIAL_WINDOW // 2
    assert (window.size, window.credit) == (INITIAL_WINDOW, INITIAL_WINDOW)


def test_bytes_not_yet_read_hold_credit_back() -> None:
    window = fresh_window()
    window.receive(INITIAL_WINDOW)
    assert window.update(buffered=INITIAL_WINDOW, now=1.0, rtt=0.0) == 0
    assert window.update(buffered=INITIAL_WINDOW // 4, now=1.0, rtt=0.0) == INITIAL_WINDOW * 3 // 4


def test_a_window_read_quickly_doubles_up_to_the_maximum_and_a_slow_one_does_not() -> None:
    fast, slow, now = fresh_window(), fresh_window(), 0.0
    for _ in range(12):
        now += 0.01
        for window, rtt in ((fast, 0.01), (slow, 0.001)):
            window.receive(window.credit)
            window.update(buffered=0, now=now, rtt=rtt)
    assert fast.size == MAX_WINDOW
    assert slow.size == INITIAL_WINDOW


def test_random_reads_never_grant_more_than_the_window() -> None:
    rng, window, buffered, now = random.Random(5), fresh_window(), 0, 0.0
    for _ in range(2000):
        now += rng.random() * 0.01
        if rng.random() < 0.5 and window.credit:
            size = rng.randrange(1, window.credit + 1)
            window.receive(size)
            buffered += size
        else:
            buffered -= rng.randrange(0, buffered + 1)
            window.update(buffered=buffered, now=now, rtt=0.005)
        assert window.credit + buffered <= window.size <= MAX_WINDOW


def grow_until_stuck(window: ReceiveWindow, rounds: int = 40) -> None:
    """A reader that keeps up with a peer that sends all its credit, 10 ms per round."""
    for n in range(1, rounds + 1):
        window.receive(window.credit)
        window.update(buffered=0, now=n * 0.01, rtt=0.01)


def test_the_windows_of_one_connection_grow_no_further_than_its_budget_together() -> None:
    budget = WindowBudget(available=3 * INITIAL_WINDOW)
    windows = [ReceiveWindow(now=0.0, budget=budget) for _ in range(4)]
    for window in windows:
        grow_until_stuck(window)
    assert sum(w.size for w in windows) == 4 * INITIAL_WINDOW + 3 * INITIAL_WINDOW
    assert budget.available == 0
    assert all(w.credit <= w.size for w in windows)


def test_a_closed_stream_gives_its_growth_back_once() -> None:
    budget = WindowBudget(available=MAX_WINDOW)
    first = ReceiveWindow(now=0.0, budget=budget)
    grow_until_stuck(first)
    assert (first.size, budget.available) == (MAX_WINDOW, INITIAL_WINDOW)
    first.release()
    first.release()
    assert budget.available == MAX_WINDOW
    second = ReceiveWindow(now=0.0, budget=budget)
    grow_until_stuck(second)
    assert second.size == MAX_WINDOW
