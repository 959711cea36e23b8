"""The self-organizing mesh on loopback: time to reachable, time to found by id, memory per
node, DHT lookup time, with 20 and with 100 nodes (issue 15's closing note).

Nodes run several per worker process (`NODES_PER_PROCESS`), each on its own 127.0.N.1 (its own
/24), every one given only the first node's address; one in ten is behind a "NAT"
(`Reachability.PRIVATE`: on loopback every dial-back succeeds, so reachability is stated, as in
tests/mesh/test_automesh.py). Workers start their nodes one after another and all workers run
at once. Per node:

- reachable: from its start until its signed record is in the DHT (`wait_published`: an
  address confirmed by reflectors, and for a private node 2 relay reservations held);
- found by id: from its start until another node's lookup of its id returned its verified
  record (reachable + the first lookup);
- lookups: `LOOKUPS` record lookups per node of random other nodes, once all are published
  (latency, and the share that found a valid record);
- memory: a worker's RSS growth per node it runs, from the same process before its first node.

Baselines in the same run: a plain `MeshNode` start (no mesh) in the same worker, and one
echo round trip over an open connection between two of its nodes. Printed with `uptime`'s load
average: the machine is shared, so read the ratios.

Run: .venv/bin/python -m benchmarks.bench_mesh [N ...]   (default: 20 100)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

NODES_PER_PROCESS = 25
LOOKUPS = 5
PRIVATE_EVERY = 10
"""Every tenth node is behind a NAT (relays, no DHT server)."""
DEADLINE = 600.0
"""Seconds a worker may take for everything (start, publish, lookups)."""


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- a worker: several nodes in one trio run ---------------------------------------------------


async def worker(first: int, count: int, bootstrap: str | None) -> None:
    import trio

    from meshnat._libp2p import ID, PeerInfo
    from meshnat.echo import EchoService, echo
    from meshnat.mesh import MeshConfig, Reachability
    from meshnat.node import MeshNode, NodeConfig

    def say(**fields: object) -> None:
        print(json.dumps(fields), flush=True)

    base_rss = rss_kib()
    started = trio.current_time()  # a plain node first: the baseline start
    async with MeshNode(NodeConfig(listen_ip="127.255.0.1")):
        plain_start = trio.current_time() - started
    nodes: list[MeshNode] = []
    starts: list[float] = []
    reachable_of: dict[int, float] = {}
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            async def run(index: int, boot: str | None, *,
                          task_status: trio.TaskStatus[MeshNode] = trio.TASK_STATUS_IGNORED
                          ) -> None:
                private = index % PRIVATE_EVERY == PRIVATE_EVERY - 1
                reach = Reachability.PRIVATE if private else Reachability.PUBLIC
                config = NodeConfig(listen_ip=f"127.{index // 250}.{index % 250 + 1}.1",
                                    bootstrap=[boot] if boot else [],
                                    mesh=MeshConfig(reachability=reach))
                async with MeshNode(config) as node:
                    await node.mount(EchoService())
                    task_status.started(node)
                    await trio.sleep_forever()

            for index in range(first, first + count):
                boot = bootstrap or (str(nodes[0].addrs[0]) if nodes else None)
                starts.append(trio.current_time())
                nodes.append(await nursery.start(run, index, boot))
                if index == 0:
                    say(event="first", addr=str(nodes[0].addrs[0]))

            async def published(i: int) -> None:
                await nodes[i].mesh.wait_published()
                reachable_of[i] = trio.current_time() - starts[i]

            async with trio.open_nursery() as waits:
                for i in range(len(nodes)):
                    waits.start_soon(published, i)
            say(event="published", peers=[str(n.peer_id) for n in nodes],
                reachable=[reachable_of[i] for i in range(len(nodes))],
                rss_kib=rss_kib() - base_rss, plain_start=plain_start)

            line = await trio.to_thread.run_sync(sys.stdin.readline)  # every worker's peers
            everyone = [ID.from_base58(p) for p in json.loads(line)]
            lookups: list[tuple[str, float, bool]] = []
            rng = random.Random(first)

            async def look(node: MeshNode) -> None:
                others = [p for p in everyone if p != node.peer_id]
                for peer in rng.sample(others, min(LOOKUPS, len(others))):
                    began = trio.current_time()
                    record = await node.mesh.dht.lookup(peer)
                    lookups.append((str(peer), trio.current_time() - began,
                                    record is not None and record.peer_id == peer))

            async with trio.open_nursery() as looking:
                for node in nodes:
                    looking.start_soon(look, node)
            echo_rtt = None
            if len(nodes) >= 2:
                await nodes[0].connect(nodes[1].peer_info())
                await echo(nodes[0], PeerInfo(nodes[1].peer_id, []), b"warm")
                began = trio.current_time()
                await echo(nodes[0], PeerInfo(nodes[1].peer_id, []), b"baseline")
                echo_rtt = trio.current_time() - began
            say(event="looked", lookups=lookups, echo_rtt=echo_rtt,
                rss_kib=rss_kib() - base_rss)
            await trio.to_thread.run_sync(sys.stdin.readline)  # stop
            nursery.cancel_scope.cancel()


# --- the parent: workers, figures ------------------------------------------------------------


def start_worker(first: int, count: int, bootstrap: str | None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "benchmarks.bench_mesh", "--worker", str(first), str(count),
            bootstrap or "-"]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def read_event(proc: subprocess.Popen[str], name: str) -> dict[str, object]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker exited before {name!r}")
        event: dict[str, object] = json.loads(line)
        if event["event"] == name:
            return event


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    if not ordered:
        return "-"
    at = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return f"median {at(0.5):.2f} s, p90 {at(0.9):.2f} s, max {ordered[-1]:.2f} s"


def run(total: int) -> None:
    shares = [(f, min(NODES_PER_PROCESS, total - f)) for f in range(0, total, NODES_PER_PROCESS)]
    first = start_worker(*shares[0], None)
    workers = [first]
    try:
        bootstrap = str(read_event(first, "first")["addr"])
        workers += [start_worker(f, n, bootstrap) for f, n in shares[1:]]
        published = [read_event(w, "published") for w in workers]
        everyone = [p for e in published for p in e["peers"]]  # type: ignore[attr-defined]
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(json.dumps(everyone) + "\n")
            w.stdin.flush()
        looked = [read_event(w, "looked") for w in workers]
    finally:
        for w in workers:
            if w.stdin is not None and w.poll() is None:
                w.stdin.write("stop\n")
                w.stdin.close()
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
    reachable = [t for e in published for t in e["reachable"]]  # type: ignore[attr-defined]
    lookups = [entry for e in looked for entry in e["lookups"]]  # type: ignore[attr-defined]
    ok = [t for _, t, found in lookups if found]
    # found by id: its own time to reachable plus the fastest successful lookup of it
    first_found: dict[str, float] = {}
    for peer, took, found in lookups:
        if found:
            first_found[peer] = min(first_found.get(peer, took), took)
    own = {p: r for e in published for p, r in zip(e["peers"], e["reachable"], strict=True)}  # type: ignore[call-overload]
    found_by_id = [own[p] + t for p, t in first_found.items()]
    rss = [float(e["rss_kib"]) / len(p["peers"])  # type: ignore[arg-type]
           for e, p in zip(looked, published, strict=True)]
    plain = [float(e["plain_start"]) for e in published]  # type: ignore[arg-type]
    echo_rtts = [float(e["echo_rtt"]) for e in looked if e["echo_rtt"] is not None]  # type: ignore[arg-type]
    load = os.getloadavg()
    print(f"{total} nodes in {len(workers)} processes on loopback "
          f"({total // PRIVATE_EVERY} behind NAT), load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  reachable (start -> record published): {percentiles(reachable)}")
    print(f"  found by id (reachable + first lookup): {percentiles(found_by_id)} "
          f"({len(first_found)} of {total} looked up)")
    print(f"  DHT lookup: {percentiles(ok)}, {len(ok)}/{len(lookups)} found a valid record")
    print(f"  memory: {sum(rss) / len(rss):.0f} KiB RSS per node (worker growth / its nodes)")
    plain_s, echo_s = sum(plain) / len(plain), min(echo_rtts)
    reach_median, lookup_median = sorted(reachable)[len(reachable) // 2], sorted(ok)[len(ok) // 2]
    print(f"  baselines: plain MeshNode start {plain_s:.3f} s (reachable median / that: "
          f"{reach_median / plain_s:.0f}x); echo over an open connection {echo_s * 1e3:.1f} ms "
          f"(lookup median / that: {lookup_median / echo_s:.0f}x)")


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        import trio

        first, count, bootstrap = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        trio.run(worker, first, count, None if bootstrap == "-" else bootstrap)
        return
    for total in [int(a) for a in sys.argv[1:]] or [20, 100]:
        run(total)


if __name__ == "__main__":
    main()
