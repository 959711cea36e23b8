"""Router port mapping in the lab (miniupnpd in front of a symmetric NAT).

Needs root (network namespaces) and Debian's miniupnpd-nftables. Two figures:

1. Time to a usable mapping, per protocol (PCP, NAT-PMP, UPnP-IGD): a fresh node in the
   mapping site mounts a PortMapper restricted to one protocol; "granted" is the gateway's
   answer, "confirmed" adds the reflector's dial-back (what makes it advertisable). The
   baseline is one UDP address discovery (three reflectors) by the same node in the same run,
   the step a node takes anyway before punching (behind a symmetric NAT it ends without a
   majority: the time of that round). ROUNDS rounds each (median, p90).
2. Share of lab pairs that end direct: a node in the mapping site listens, nodes in a public,
   a cone and a symmetric site connect (`meshnat connect --wait-direct 5`), with the mapper
   on (its confirmed mapping passed as `--mapped`) and off (relay, then a punch), same run.

Run: sudo .venv/bin/python -m benchmarks.bench_portmap_lab
"""

from __future__ import annotations

import contextlib
import json
import sys

import trio
from tests.lab.test_punch_lab import mesh_args, start_relay
from tests.support.netlab import Host, Lab, Nat, lab_available

from benchmarks._stats import median_p, row

ROUNDS = 5
PROTOCOLS = ("pcp", "nat-pmp", "upnp")
WIDTHS = (12, 16, 14, 18, 16, 12)


async def _child(protocol: str, reflectors: list[str]) -> None:
    """In the mapping site: time discovery, then one PortMapper round; one JSON line."""
    from meshnat import _libp2p
    from meshnat.discovery import DiscoveryConfig, PeerAddressDiscovery
    from meshnat.errors import NoConsensus
    from meshnat.node import MeshNode, NodeConfig
    from meshnat.portmap import MappingProtocol, Obtained, PortMapConfig, PortMapper

    peers = _libp2p.merge_peer_addrs(reflectors)
    granted: list[float] = []
    async with MeshNode(NodeConfig()) as node:
        discovery = await node.mount(PeerAddressDiscovery(peers, DiscoveryConfig()))
        started = trio.current_time()
        with trio.fail_after(20), contextlib.suppress(NoConsensus):  # symmetric: no majority
            await discovery.discover("udp")
        discovered = trio.current_time() - started

        def on_event(event: object) -> None:
            if isinstance(event, Obtained) and not granted:
                granted.append(trio.current_time() - started)

        config = PortMapConfig(protocols=(MappingProtocol(protocol),), transports=("udp",))
        started = trio.current_time()
        mapper = await node.mount(PortMapper(config, helpers=peers, on_event=on_event))
        with trio.fail_after(30):
            await mapper.wait_confirmed("udp")
        confirmed = trio.current_time() - started
        await node.unmount(mapper)
    print(json.dumps({"discovery_s": discovered, "granted_s": granted[0],
                      "confirmed_s": confirmed}), flush=True)


def time_to_mapping(lab: Lab, host: Host, reflectors: list[str]) -> None:
    print(row("protocol", "granted ms", "p90 ms", "confirmed ms", "discovery ms",
              "vs discovery", widths=WIDTHS))
    for protocol in PROTOCOLS:
        runs = []
        for _ in range(ROUNDS):
            proc = host.run(host.python("-m", "benchmarks.bench_portmap_lab", "--child",
                                        protocol, *reflectors), timeout=90)
            if proc.returncode != 0:
                raise SystemExit(f"{protocol}: {proc.stderr[-2000:]}")
            runs.append(json.loads(proc.stdout.splitlines()[-1]))
        granted, g90 = median_p([r["granted_s"] * 1e3 for r in runs], 90)
        confirmed, _ = median_p([r["confirmed_s"] * 1e3 for r in runs], 90)
        discovery, _ = median_p([r["discovery_s"] * 1e3 for r in runs], 90)
        print(row(protocol, f"{granted:.1f}", f"{g90:.1f}", f"{confirmed:.1f}",
                  f"{discovery:.1f}", f"{confirmed / discovery:.2f}x", widths=WIDTHS))


def direct_share(lab: Lab, home: Host, relay: str, reflectors: list[str]) -> None:
    dialers = {"public": lab.public_host("public"), "cone": lab.site("cone", Nat.CONE).hosts[0],
               "symmetric": lab.site("sym", Nat.SYMMETRIC).hosts[0]}
    for mapper in (False, True):
        flags = ["--port-mapping"] if mapper else []
        proc, ready = home.start_json(home.python("-m", "meshnat", "listen", *flags,
                                                  *mesh_args(relay, reflectors)), timeout=90)
        mapped = [x for a in ready.get("mapped", []) for x in ("--mapped", a)]
        paths = {}
        for name, host in dialers.items():
            done = host.run(host.python("-m", "meshnat", "connect", ready["peer_id"],
                                        "--wait-direct", "5", *mapped,
                                        *mesh_args(relay, reflectors)), timeout=120)
            result = json.loads(done.stdout.splitlines()[-1]) if done.stdout else {}
            paths[name] = result.get("path", "failed")
        direct = sum(p in ("direct", "punched", "mapped") for p in paths.values())
        print(f"mapper {'on ' if mapper else 'off'}: {direct}/{len(paths)} pairs direct "
              f"({', '.join(f'{k} {v}' for k, v in paths.items())})")
        proc.kill()
        proc.wait(timeout=10)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        trio.run(_child, sys.argv[2], sys.argv[3:])
        return
    if (reason := lab_available()) is not None:
        raise SystemExit(reason)
    with Lab() as lab:
        relay, reflectors = start_relay(lab)
        home = lab.site("home", Nat.SYMMETRIC, port_mapping=True, hosts=2)
        time_to_mapping(lab, home.hosts[1], reflectors)
        direct_share(lab, home.hosts[0], relay, reflectors)


if __name__ == "__main__":
    main()
