"""Codec cost: meshnat encode+decode of an ObserveResponse vs raw cbor2 of the same map.

Run: .venv/bin/python -m benchmarks.bench_codec
"""

from __future__ import annotations

import time
from ipaddress import ip_address

import cbor2

from benchmarks._stats import row
from meshnat.endpoint import Endpoint
from meshnat.reflection.messages import ObserveResponse, Transport
from meshnat.wire import decode, encode

N = 50_000


def per_second(fn: object, n: int = N) -> float:
    assert callable(fn)
    for _ in range(1000):  # warm-up
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - started)


def main() -> None:
    msg = ObserveResponse(bytes(16), Endpoint(ip_address("198.18.0.20"), 4001), Transport.UDP)
    frame = encode(msg)
    raw = cbor2.loads(frame)
    baseline = per_second(lambda: cbor2.loads(cbor2.dumps(raw)))
    ours = per_second(lambda: decode(encode(msg), ObserveResponse))
    print(row("round trips/s (encode+decode)", "value", "baseline", "ratio"))
    print(row("meshnat strict codec", f"{ours:,.0f}", f"{baseline:,.0f}",
              f"{ours / baseline:.2f}"))
    print(f"frame size: {len(frame)} bytes; baseline = raw cbor2.dumps/loads of the same map")


if __name__ == "__main__":
    main()
