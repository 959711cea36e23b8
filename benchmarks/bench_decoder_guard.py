"""What the CBOR pre-scan (wire/scan.py) costs, and what it saves.

    python -m benchmarks.bench_decoder_guard

Per golden frame (tests/vectors) and per hostile frame: microseconds per call of
- `check_frame` alone (the pre-scan),
- `cbor2.load` with meshnat's options (the baseline: what decoding cost before the pre-scan),
- `cbor2.load` with tags refused through cbor2's own options instead (a semantic decoder that
  raises for every tag number below 300, and a tag_hook for the rest): the alternative to a
  pre-scan; floats and simple values still decode and are refused later by the field checks,
- the whole `decode()` of the frame's own type (pre-scan included).
Best of 5 runs of N calls each (CPU time of this process).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
from tests.support.decoders import message_types
from tests.unit.test_hostile_input import shared_reference_bomb

from meshnat.errors import RemoteProtocolError
from meshnat.wire import decode
from meshnat.wire.scan import check_frame

VECTORS = Path(__file__).parents[1] / "tests" / "vectors"
CALLS = 2000


def _refuse(*_: object) -> object:
    raise ValueError("tag refused")


TAG_OPTIONS: dict[str, object] = {"semantic_decoders": dict.fromkeys(range(300), _refuse),
                                  "tag_hook": _refuse}


def per_call(fn: Callable[[], object], calls: int = CALLS) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls):
            with contextlib.suppress(RemoteProtocolError, cbor2.CBORDecodeError, ValueError):
                fn()
        best = min(best, (time.process_time() - started) / calls)
    return best * 1e6


def cbor2_plain(frame: bytes) -> object:
    return cbor2.load(io.BytesIO(frame), max_depth=4, allow_indefinite=False,
                      allow_duplicate_keys=False)


def cbor2_options(frame: bytes) -> object:
    return cbor2.load(io.BytesIO(frame), max_depth=4, allow_indefinite=False,
                      allow_duplicate_keys=False, **TAG_OPTIONS)  # type: ignore[arg-type]


def main() -> None:
    types = message_types()
    rows: list[tuple[str, bytes, type | None]] = []
    for path in sorted(VECTORS.glob("*.hex")):
        frame = bytes.fromhex(path.read_text().strip())
        own = next((t for t in types if _decodes(frame, t)), None)
        rows.append((path.stem, frame, own))
    rows += [("hostile: shared refs 1000x100x100", shared_reference_bomb(1000, 100), None),
             ("hostile: bignum 10**1000", cbor2.dumps({0: 1, 1: 2, 8: 10**1000}), None),
             ("hostile: 400 floats", cbor2.dumps({0: 1, 8: [1.5] * 400}), None)]
    print(f"{'frame':36} {'bytes':>5} {'scan us':>8} {'cbor2 us':>9} {'options us':>10} "
          f"{'decode us':>9} {'scan/cbor2':>10}")
    scan_total = cbor2_total = options_total = 0.0
    for name, frame, own in rows:
        calls = 20 if name.startswith("hostile: shared") else CALLS
        scan = per_call(lambda f=frame: check_frame(f, max_depth=4), calls)
        plain = per_call(lambda f=frame: cbor2_plain(f), calls)
        options = per_call(lambda f=frame: cbor2_options(f), calls)
        whole = per_call(lambda f=frame, t=own: decode(f, t), calls) if own else float("nan")
        if not name.startswith("hostile"):
            scan_total, cbor2_total, options_total = (
                scan_total + scan, cbor2_total + plain, options_total + options)
        print(f"{name:36} {len(frame):5d} {scan:8.2f} {plain:9.2f} {options:10.2f} "
              f"{whole:9.2f} {scan / plain:10.2f}")
    print(f"\ngolden frames, sum: scan {scan_total:.1f} us, cbor2 {cbor2_total:.1f} us, "
          f"cbor2 with tag options {options_total:.1f} us; pre-scan + cbor2 costs "
          f"{(scan_total + cbor2_total) / cbor2_total:.2f}x cbor2 alone, tag options "
          f"{options_total / cbor2_total:.2f}x")


def _decodes(frame: bytes, cls: type) -> bool:
    try:
        decode(frame, cls)
    except RemoteProtocolError:
        return False
    return True


if __name__ == "__main__":
    main()
