"""Discovery latency on loopback with 1, 3, 5 and 9 reflectors, vs one single UDP query.

Run: .venv/bin/python -m benchmarks.bench_discovery
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from benchmarks._stats import median_p, row
from meshnat import MeshNode, NodeConfig
from meshnat.discovery import DiscoveryConfig, PeerAddressDiscovery
from meshnat.reflection import ReflectionConfig, ReflectionService
from meshnat.reflection.client import observe_over_udp

ROUNDS, COUNTS = 50, (1, 3, 5, 9)
LOOPBACK = NodeConfig(listen_ip="127.0.0.1")
UNLIMITED = ReflectionConfig(rate=1e9, burst=10**9)


async def main() -> None:
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(MeshNode(LOOPBACK))
        reflectors = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(9)]
        for r in reflectors:
            await r.mount(ReflectionService(UNLIMITED))
        first = reflectors[0].listen_endpoint("udp")
        single = []
        for _ in range(ROUNDS):
            started = trio.current_time()
            await observe_over_udp(client, first, timeout=3)
            single.append(trio.current_time() - started)
        base, _ = median_p(single, 95)
        print(row("discovery, udp, loopback", "median ms", "p95 ms", "ratio to 1 query"))
        print(row("single query (baseline)", f"{base * 1e3:.3f}",
                  f"{median_p(single, 95)[1] * 1e3:.3f}", "1.00"))
        for count in COUNTS:
            config = DiscoveryConfig(min_responses=count, group_by_network=False)
            discovery = await client.mount(PeerAddressDiscovery(
                [r.peer_info() for r in reflectors[:count]], config))
            samples = []
            for _ in range(ROUNDS):
                started = trio.current_time()
                await discovery.discover("udp")
                samples.append(trio.current_time() - started)
            await client.unmount(discovery)
            median, p95 = median_p(samples, 95)
            print(row(f"{count} reflectors, majority vote", f"{median * 1e3:.3f}",
                      f"{p95 * 1e3:.3f}", f"{median / base:.2f}"))


if __name__ == "__main__":
    trio.run(main)
