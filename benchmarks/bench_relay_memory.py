"""Relay memory per idle reservation: a `meshnat relay` process holding N reservations.

The relay runs as its own process on loopback (so its resident memory is what is measured);
N plain py-libp2p hosts, spread over WORKERS client processes, connect to it and reserve, 32 at a
time per process. Printed: the
relay's RSS before and after, and the difference per reservation. Baseline in the same run:
the same relay after N clients merely connected (no reservation), so the ratio separates the
cost of a reservation from that of a connection.

Run: .venv/bin/python -m benchmarks.bench_relay_memory [N]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import multiaddr
import trio
from libp2p import new_host
from libp2p.peer.peerinfo import info_from_p2p_addr

from meshnat._libp2p import single_exception
from meshnat._libp2p.relay import HOP_PROTOCOL, CircuitRelay

COUNT = int(sys.argv[1]) if sys.argv[1:2] and sys.argv[1] != "--worker" else 600
"""The issue asks for 1,000. On this 2-core machine, 1,000 full py-libp2p client hosts plus the
relay starve each other: around 45 s into the run the relay starts closing connections and
handshakes time out, whatever the spread (4-8 processes, 2-32 dials at once). 600 hold."""
WORKERS = 4
"""Hundreds of py-libp2p hosts in one trio loop starve each other's identify and keepalive
timers and fail past ~250; 150 per process hold steady."""
PARALLEL = 8
ATTEMPTS = 3


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Clients:
    """`count` hosts, each held open in its own task until `release` is set."""

    def __init__(self, relay: str, reserve: bool, count: int) -> None:
        self.relay, self.reserve, self.count = relay, reserve, count
        self.limiter = trio.CapacityLimiter(PARALLEL)
        self.ready, self.all_ready, self.release = 0, trio.Event(), trio.Event()
        self.retried = 0

    async def one(self) -> None:
        """One client; a failed attempt (the loaded relay drops a few) is counted and retried."""
        for attempt in range(ATTEMPTS):
            try:
                await self._attempt()
                return
            except Exception:
                if attempt == ATTEMPTS - 1:
                    raise
                self.retried += 1

    async def _attempt(self) -> None:
        host = new_host(listen_addrs=[])
        info = info_from_p2p_addr(multiaddr.Multiaddr(self.relay))
        async with host.run(listen_addrs=[]):
            async with self.limiter:
                with trio.fail_after(30):
                    await host.connect(info)
                    if self.reserve:
                        await self._reserve(host, info)
            self.ready += 1
            if self.ready == self.count:
                self.all_ready.set()
            await self.release.wait()

    @staticmethod
    async def _reserve(host: object, info: object) -> None:
        circuits = CircuitRelay(host, hop=False, circuit_duration=60,  # type: ignore[arg-type]
                                circuit_bytes=1, max_circuits=1, max_reservations=1,
                                reservation_ttl=3600)
        stream = await host.new_stream(info.peer_id, [HOP_PROTOCOL])  # type: ignore[attr-defined]
        async with trio.open_nursery() as nursery:
            assert await circuits.reserve(stream, info.peer_id, nursery)  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()  # no refresher: the reservation stays idle


async def worker(relay: str, reserve: bool, count: int) -> None:
    """One client process: connect `count` clients, say "ready", hold until stdin closes."""
    clients = Clients(relay, reserve, count)
    with single_exception():
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(clients.one)
            with trio.fail_after(600):
                await clients.all_ready.wait()
            print(f"ready {clients.retried}", flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)
            clients.release.set()


def hold_clients(relay: str, reserve: bool, pid: int) -> tuple[int, int]:
    """Connect COUNT clients over WORKERS processes: the relay's RSS while they all hold, and
    how many attempts failed and were retried."""
    workers = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_relay_memory", "--worker", relay,
         str(int(reserve)), str(COUNT // WORKERS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(WORKERS)]
    try:
        retried = 0
        for proc in workers:
            assert proc.stdout is not None
            word, _, count = proc.stdout.readline().partition(" ")  # bounded by its fail_after
            if word != "ready":
                raise RuntimeError(f"a client worker failed (exit {proc.wait(timeout=30)})")
            retried += int(count)
        return rss_kib(pid), retried
    finally:
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in workers:
            proc.wait(timeout=60)


def measure(reserve: bool) -> tuple[int, int, int]:
    """The relay's RSS before and with the clients, and the client attempts retried."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshnat", "relay", "--json", "--listen", "/ip4/127.0.0.1/tcp/0",
         "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--alt-port", "0",
         "--max-reservations", str(COUNT + 10)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        relay = next(a for a in ready["addrs"] if "/tcp/" in a)
        before = rss_kib(proc.pid)
        return (before, *hold_clients(relay, reserve, proc.pid))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        relay, reserve, count = sys.argv[2], bool(int(sys.argv[3])), int(sys.argv[4])
        trio.run(worker, relay, reserve, count)
        return
    connected = measure(reserve=False)
    reserved = measure(reserve=True)
    per_conn = (connected[1] - connected[0]) * 1024 / COUNT
    per_resv = (reserved[1] - reserved[0]) * 1024 / COUNT
    print(f"relay RSS with {COUNT} peers, loopback")
    print(f"  connected only: {connected[0] / 1024:.1f} -> {connected[1] / 1024:.1f} MiB, "
          f"{per_conn / 1024:.1f} KiB per peer (baseline)")
    print(f"  with idle reservations: {reserved[0] / 1024:.1f} -> {reserved[1] / 1024:.1f} MiB, "
          f"{per_resv / 1024:.1f} KiB per reservation; ratio {per_resv / per_conn:.2f} "
          f"(a reservation adds {(per_resv - per_conn) / 1024:.1f} KiB to its connection)")
    print(f"  client attempts dropped by the loaded relay and retried: {connected[2]} while "
          f"connecting, {reserved[2]} while reserving")


if __name__ == "__main__":
    main()
