"""The fuzz invariant as properties, for every decoder and datagram entry point
(tests/support/decoders.py): arbitrary bytes and mutated golden frames decode or raise a
RemoteProtocolError subclass (datagram entry points drop them), fast and in bounded memory,
with a short error message.

"Fast" is CPU time of this process (time.process_time) under 50 ms per input, a bound ~100x
the usual cost, so a loaded machine does not make it a race; memory is tracemalloc's peak
during the call, under 1 MiB (a 4 KiB frame of shared references used to take ~1 GB).
"""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnat.errors import RemoteProtocolError
from meshnat.wire import MAX_MESSAGE_SIZE
from tests.support.decoders import (
    MESSAGE_MODULES,
    Target,
    message_types,
    messages_modules_on_disk,
    seeds,
    targets,
)

TARGETS = targets()
SEEDS = seeds(TARGETS)
MAX_CPU = 0.050
MAX_PEAK = 1024 * 1024
MAX_MESSAGE = 200
EXAMPLES = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run_bounded(target: Target, data: bytes) -> None:
    """Run one input; fail on any exception but the allowed ones, on time or on memory."""
    gc.disable()  # a collection of the suite's garbage is not the decoder's time
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        started = time.process_time()
        try:
            target.run(data)
        except RemoteProtocolError as exc:
            if target.datagram:
                raise AssertionError(f"{target.name} raised instead of dropping") from exc
            assert len(str(exc)) <= MAX_MESSAGE, f"{target.name}: {len(str(exc))} chars"
        cpu = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert cpu < MAX_CPU, f"{target.name}: {cpu * 1e3:.1f} ms of CPU"
    assert peak < MAX_PEAK, f"{target.name}: {peak} bytes at peak"


def mutate(data: st.DataObject, seed: bytes) -> bytes:
    frame = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.integers(0, 2))
        at = data.draw(st.integers(0, len(frame)))
        if kind == 0 and frame:
            frame[min(at, len(frame) - 1)] = data.draw(st.integers(0, 255))
        elif kind == 1:
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=9))
        else:
            del frame[at:at + data.draw(st.integers(1, 8))]
    return bytes(frame[: data.draw(st.integers(0, len(frame)))])


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
@EXAMPLES
@given(raw=st.binary(max_size=MAX_MESSAGE_SIZE + 64))
def test_arbitrary_bytes_decode_or_raise_only_remote_protocol_errors(target: Target,
                                                                     raw: bytes) -> None:
    run_bounded(target, raw)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
@EXAMPLES
@given(data=st.data())
def test_mutated_golden_frames_decode_or_raise_only_remote_protocol_errors(
    target: Target, data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(SEEDS[target.name]), label="seed")
    run_bounded(target, mutate(data, seed))


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_every_golden_seed_is_handled_within_the_bounds(target: Target) -> None:
    for seed in SEEDS[target.name]:
        run_bounded(target, seed)


def test_every_protocol_module_and_message_type_is_fuzzed() -> None:
    assert {m.__name__ for m in MESSAGE_MODULES} == messages_modules_on_disk()
    names = {t.name for t in TARGETS}
    for cls in message_types():
        assert f"decode:{cls.__module__.split('.')[-2]}.{cls.__name__}" in names
    assert len(message_types()) >= 25
