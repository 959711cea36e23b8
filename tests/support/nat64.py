"""NAT64 for the lab's IPv6-only sites: TAYGA (userspace, stateless, a TUN device) in the
site's router, with the router's IPv4 masquerade making it stateful (RFC 6146's behaviour
from RFC 6145's translator plus a NAT44, as TAYGA's documentation sets it up).

An IPv6-only host reaches an IPv4 address `a.b.c.d` at `2001:db8:64::a.b.c.d` (PREFIX, a
network-specific prefix: the well-known 64:ff9b::/96 must not carry non-global IPv4 addresses,
RFC 6052 §3.1, and TAYGA refuses the lab's 198.18/15 with it). TAYGA gives each IPv6 source an
address of POOL; the router masquerades POOL out of its WAN like its own LAN. Jool would be the
kernel's choice, but this machine loads no modules. DNS64 is left out: the lab has no DNS.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

PREFIX = "2001:db8:64::/96"
POOL = "192.168.64.0/24"
TAYGA_IP = "192.168.64.1"
"""TAYGA's own IPv4 address (ICMP errors come from it; reserved from the pool)."""
ROUTER_IP = "192.168.63.1"
"""The router's IPv4 address on the TUN device (routes to POOL go through it)."""
TUN = "nat64"


def synthesize(ipv4: str) -> str:
    """The IPv6 address an IPv6-only host uses for `ipv4` (RFC 6052, a /96 prefix)."""
    net = ipaddress.IPv6Network(PREFIX)
    return str(ipaddress.IPv6Address(int(net.network_address) | int(ipaddress.IPv4Address(ipv4))))


def config(data_dir: Path) -> str:
    return (f"tun-device {TUN}\nipv4-addr {TAYGA_IP}\nprefix {PREFIX}\n"
            f"dynamic-pool {POOL}\ndata-dir {data_dir}\n")


def _run(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *args], check=True, capture_output=True,
                   text=True, timeout=30)


def start(ns: str, workdir: Path, number: int, router6: str) -> subprocess.Popen[bytes]:
    """Run TAYGA in router namespace `ns` (its TUN device, addresses and routes first);
    `router6`: an IPv6 address of the router's own for the TUN device. Returns the daemon,
    running in the foreground (the lab kills it by pid), once its device is up."""
    conf, data, log = (workdir / f"tayga-{number}{ext}" for ext in (".conf", ".d", ".log"))
    data.mkdir(exist_ok=True)
    conf.write_text(config(data))
    _run(ns, "tayga", "-c", str(conf), "--mktun")
    _run(ns, "ip", "link", "set", TUN, "up")
    _run(ns, "ip", "addr", "add", ROUTER_IP, "dev", TUN)
    _run(ns, "ip", "-6", "addr", "add", router6, "dev", TUN, "nodad")
    _run(ns, "ip", "route", "add", POOL, "dev", TUN)
    _run(ns, "ip", "-6", "route", "add", PREFIX, "dev", TUN)
    with log.open("ab") as out:
        # -d: foreground, its setup lines on stdout (line-buffered: the last one means it
        # holds the TUN device)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "stdbuf", "-oL", "tayga", "-c",
                                 str(conf), "-d"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while b"Dynamic pool" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"tayga did not start: {log.read_text()[-500:]}")
        time.sleep(0.05)  # polling a log file: tayga has no readiness notification
    return proc
