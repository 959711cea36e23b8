"""A NAT lab built from Linux network namespaces, veth links and nftables (needs root).

Topology: one namespace `<prefix>-inet` holds a bridge, the "internet" (198.18.0.0/24, the
RFC 2544 benchmarking range). Public hosts sit on it directly. Each site is a router namespace
with a WAN leg on the bridge (or on a parent site's LAN, for double NAT) and a LAN
(10.<n>.0.0/24) holding one or more hosts. Nothing in the lab has a route out of it.

Router kinds (RFC 4787 terms):
- CONE: Linux masquerade (endpoint-independent mapping, port kept when free) behind a stateful
  firewall: address-and-port-dependent filtering, i.e. a port-restricted cone. Unsolicited
  inbound is dropped on the forward hook and on the input hook (otherwise an early punch packet
  is taken by the router itself and the inside host loses its port).
- SYMMETRIC: the same with `masquerade random,fully-random`: endpoint-dependent mapping.
- UDP_BLOCKED: a cone NAT whose firewall drops all UDP leaving the site.
- PORT_FORWARD: a cone NAT that forwards `forwarded_port` (TCP and UDP) to the first host:
  endpoint-independent filtering on that port.

A `carrier` router (a CGNAT, LAN in 100.64.0.0/10) of either mapping kind can hairpin every
mapping for the homes behind it (`hairpin`; the rules and their limits: tests/support/nat_rules.py).

IPv6 (`ipv6=True`, top-level sites only): the hosts of such a site also get global addresses
in the site's own /48 (`2001:db8:<n>::/64` on the LAN, the documentation range, which namespaces
route like any other), with no NAT: the router is a stateful IPv6 firewall (the same `inet`
chains: established/related in, nothing unsolicited, neighbour discovery allowed) beside its
IPv4 NAT. Public hosts are always dual-stack (each with a /48 of its own in 2001:db8:ff00::/40,
on-link on the internet bridge, which routes every IPv6 site's /48 via its router). IPv6
addresses skip duplicate address detection, so they are usable at once. WAN emulation (`wan`)
delays and drops IPv6 as it does IPv4. An `ipv6_only` site's hosts have no IPv4 address at all
(`Host.ip` is then their IPv6 address); its router translates NAT64 (tests/support/nat64.py:
TAYGA, `2001:db8:64::a.b.c.d` reaches IPv4 `a.b.c.d` from the router's public IPv4 address).

Any top-level router can also run miniupnpd (`port_mapping`, tests/support/miniupnpd.py):
UPnP-IGD, NAT-PMP and PCP for its LAN. Its WAN address is then on MAPPING_PREFIX, a second
prefix on the internet bridge that every bridge host routes on-link.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import miniupnpd, nat64
from tests.support.lab_hosts import Host, Nat, Site  # tests and benchmarks import them from here
from tests.support.nat_rules import ruleset
from tests.support.wan import Wan, WanEmulator, stop_process

INET_PREFIX = "198.18.0"
INET6_PREFIX = "2001:db8:ff00::/40"
"""The internet bridge's IPv6 space (RFC 3849 documentation range), routed on-link by every
leg: each public host and router WAN gets a /48 of its own in it (`2001:db8:ffNN::1/64`), so
no two of them share a /56, as on the real internet (per-/56 votes and limits count them
apart)."""
MAPPING_PREFIX = "11.18.0"
"""WAN addresses of port-mapping routers: miniupnpd will not map on 198.18.0.0/15 (reserved)."""


def lab_available() -> str | None:
    """None when a lab can be built here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs `{tool}` (Debian packages iproute2, nftables)"
    return None


def _run(*args: str, input: str | None = None) -> str:
    proc = subprocess.run(args, input=input, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


class Lab:
    """Builds namespaces on demand and deletes every one of them (and their processes) on close."""

    def __init__(self, prefix: str | None = None, *, wan_seed: int = 1,
                 spread_networks: bool = False) -> None:
        self.prefix = prefix or f"mnlab{os.getpid()}"
        self.spread_networks = spread_networks
        """Each internet address on its own /24 (198.18.N.10 in 198.18.0.0/16, all on the one
        bridge), as peers on the real internet are: for code that counts one vote or one
        result per /24. Not with port-mapping sites."""
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.daemons: list[subprocess.Popen[bytes]] = []
        self._workdir: Path | None = None
        self._bridge_legs: list[tuple[str, str]] = []  # (namespace, interface) on br0
        self._mapping_ips = itertools.count(10)
        self._mapping_routed = False
        self.wan_seed = wan_seed
        self.wan: WanEmulator | None = None  # started with the first emulated uplink
        self._inet_ips = itertools.count(10)
        self._inet6_ips = itertools.count(10)
        self._v6_routes: list[tuple[str, str]] = []  # (site /48, router's WAN address)
        self._v6_legs: list[str] = []  # namespaces with an IPv6 leg on br0 (as eth0/wan)
        self._site_numbers = itertools.count(1)
        self._links = itertools.count(1)
        self.inet = self._namespace("inet")
        _run("ip", "-n", self.inet, "link", "add", "name", "br0", "type", "bridge")
        _run("ip", "-n", self.inet, "link", "set", "br0", "up")
        _plain_bridges(self.inet)

    # --- building ----------------------------------------------------------------------------

    def _namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        for key in ("all", "default"):  # addresses usable at once, link-local ones included
            _run("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                 f"net.ipv6.conf.{key}.accept_dad=0")
        return ns

    def _link(self, ns: str, ifname: str, peer_ns: str, bridge: str | None) -> str:
        """A veth from `ns` (named `ifname`) to `peer_ns`, enslaved to `bridge` there if given;
        returns the name of its end in `peer_ns`."""
        peer = f"v{next(self._links)}"
        _run("ip", "-n", ns, "link", "add", "name", ifname, "type", "veth",
             "peer", "name", peer, "netns", peer_ns)
        if bridge is not None:
            _run("ip", "-n", peer_ns, "link", "set", peer, "master", bridge)
        _run("ip", "-n", peer_ns, "link", "set", peer, "up")
        _run("ip", "-n", ns, "link", "set", ifname, "up")
        return peer

    def _emulate(self, port: str, wan: Wan | None) -> None:
        """Put `wan` on the internet bridge's port `port` (nothing for None)."""
        if wan is None:
            return
        if self.wan is None:
            self.wan = WanEmulator(self.inet, self.wan_seed)
        self.wan.add_uplink(port, wan)

    def _inet_ip(self) -> tuple[str, int]:
        """The next internet address and its prefix length."""
        n = next(self._inet_ips)
        return (f"198.18.{n}.10", 16) if self.spread_networks else (f"{INET_PREFIX}.{n}", 24)

    def public_host(self, name: str, *, wan: Wan | None = None) -> Host:
        """A host on the internet segment, with no NAT in front of it (`wan` on its link)."""
        ns = self._namespace(name)
        ip, length = self._inet_ip()
        self._emulate(self._link(ns, "eth0", self.inet, "br0"), wan)
        _run("ip", "-n", ns, "addr", "add", f"{ip}/{length}", "dev", "eth0")
        self._on_bridge(ns, "eth0")
        return Host(ns, ip, self, ip6=self._on_bridge6(ns, "eth0"))

    def _on_bridge6(self, ns: str, ifname: str) -> str:
        """Give `ns` an IPv6 address on the internet bridge and routes to every IPv6 site."""
        ip6 = f"2001:db8:ff{next(self._inet6_ips):02x}::1"
        _run("ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", ifname, "nodad")
        _run("ip", "-n", ns, "-6", "route", "add", INET6_PREFIX, "dev", ifname)
        for prefix, via in self._v6_routes:
            _run("ip", "-n", ns, "-6", "route", "add", prefix, "via", via)
        self._v6_legs.append(ns)
        return ip6

    def _route_site6(self, prefix: str, via: str, router_ns: str) -> None:
        """Route an IPv6 site's `prefix` via its router (`via`) from every other bridge leg."""
        for ns in self._v6_legs:
            if ns != router_ns:
                _run("ip", "-n", ns, "-6", "route", "add", prefix, "via", via)
        self._v6_routes.append((prefix, via))

    def _on_bridge(self, ns: str, ifname: str) -> None:
        """Route the port-mapping prefix on-link from `ns` (once a port-mapping site exists)."""
        self._bridge_legs.append((ns, ifname))
        if self._mapping_routed:
            _run("ip", "-n", ns, "route", "add", f"{MAPPING_PREFIX}.0/24", "dev", ifname)

    def _mapping_wan_ip(self, router_ns: str) -> str:
        """A WAN address on MAPPING_PREFIX for `router_ns`; routes the prefix lab-wide."""
        if not self._mapping_routed:
            self._mapping_routed = True
            for ns, ifname in self._bridge_legs:
                _run("ip", "-n", ns, "route", "add", f"{MAPPING_PREFIX}.0/24", "dev", ifname)
        ip = f"{MAPPING_PREFIX}.{next(self._mapping_ips)}"
        _run("ip", "-n", router_ns, "addr", "add", f"{ip}/24", "dev", "wan")
        _run("ip", "-n", router_ns, "route", "add", f"{INET_PREFIX}.0/24", "dev", "wan", "src", ip)
        self._bridge_legs.append((router_ns, "wan"))
        return ip

    def site(
        self, name: str, nat: Nat, *, hosts: int = 1, behind: Site | None = None,
        forwarded_port: int = 4001, hairpin: bool = False, wan: Wan | None = None,
        udp_timeout: int | None = None, carrier: bool = False, port_mapping: bool = False,
        ipv6: bool = False, ipv6_only: bool = False,
    ) -> Site:
        """A router of kind `nat` with `hosts` hosts behind it; `behind` nests it (double NAT).

        With `hairpin` a PORT_FORWARD router's forwarded port also works from inside the LAN,
        and a `carrier` router turns every mapping around for its LAN (tests/support/
        nat_rules.py): homes behind it reach each other at its public address.
        `wan` emulates delay, jitter and loss on the uplink (top-level sites only).
        `udp_timeout` (seconds) is how long the router keeps an idle UDP binding, for both
        conntrack's one-way and its "stream" (replied) entries; None keeps the kernel's.
        A `carrier` router is a carrier-grade NAT: its LAN is 100.64.N.0/24 (RFC 6598's shared
        space), for home sites `behind` it; it does not hairpin unless `hairpin` is set.
        A `port_mapping` router (top-level only) runs miniupnpd: UPnP-IGD, NAT-PMP and PCP.
        An `ipv6` site (top-level only) is dual-stack: its hosts also have global IPv6
        addresses (`Host.ip6`) behind the router's stateful firewall, with no NAT.
        An `ipv6_only` site's hosts have only those (no IPv4 at all), and its router runs
        NAT64 for them; `nat` is then the kind of the router's IPv4 NAT behind the NAT64.
        """
        ipv6 = ipv6 or ipv6_only
        if (wan is not None or port_mapping or ipv6) and behind is not None:
            raise ValueError("WAN emulation, port mapping and IPv6 are for top-level sites only")
        if hairpin and not (nat is Nat.PORT_FORWARD or carrier):
            raise ValueError("hairpin is for PORT_FORWARD and carrier routers only")
        n = next(self._site_numbers)
        router_ns = self._namespace(f"{name}-r")
        if behind is None and port_mapping:
            self._emulate(self._link(router_ns, "wan", self.inet, "br0"), wan)
            wan_ip = self._mapping_wan_ip(router_ns)
        elif behind is None:
            wan_ip, length = self._inet_ip()
            self._emulate(self._link(router_ns, "wan", self.inet, "br0"), wan)
            _run("ip", "-n", router_ns, "addr", "add", f"{wan_ip}/{length}", "dev", "wan")
            self._on_bridge(router_ns, "wan")
        else:
            wan_ip = behind.next_lan_ip()
            self._link(router_ns, "wan", behind.router.ns, "lanbr")
            _run("ip", "-n", router_ns, "addr", "add", f"{wan_ip}/24", "dev", "wan")
            _run("ip", "-n", router_ns, "route", "add", "default", "via", behind.lan_gateway)
        _run("ip", "-n", router_ns, "link", "add", "name", "lanbr", "type", "bridge")
        _run("ip", "-n", router_ns, "link", "set", "lanbr", "up")
        _plain_bridges(router_ns)
        lan = f"100.64.{n}" if carrier else f"10.{n}.0"
        _run("ip", "-n", router_ns, "addr", "add", f"{lan}.1/24", "dev", "lanbr")
        _run("ip", "netns", "exec", router_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        site = Site(name, nat, Host(router_ns, wan_ip, self), lan)
        if ipv6:
            site.lan6_prefix = f"2001:db8:{n:x}:"
            site.router.ip6 = self._on_bridge6(router_ns, "wan")
            _run("ip", "-n", router_ns, "-6", "addr", "add", f"{site.lan6_prefix}:1/64", "dev",
                 "lanbr", "nodad")
            _run("ip", "netns", "exec", router_ns, "sysctl", "-q", "-w",
                 "net.ipv6.conf.all.forwarding=1")
            self._route_site6(f"2001:db8:{n:x}::/48", site.router.ip6, router_ns)
        for i in range(hosts):
            ns = self._namespace(f"{name}-h{i + 1}")
            self._link(ns, "eth0", router_ns, "lanbr")
            ip = ip6 = None
            if not ipv6_only:
                ip = site.next_lan_ip()
                _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
                _run("ip", "-n", ns, "route", "add", "default", "via", f"{lan}.1")
            if site.lan6_prefix is not None:
                ip6 = f"{site.lan6_prefix}:{i + 10:x}"
                _run("ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
                _run("ip", "-n", ns, "-6", "route", "add", "default", "via",
                     f"{site.lan6_prefix}:1")
            site.hosts.append(Host(ns, ip or ip6 or "", self, ip6=ip6))
        if ipv6_only:
            self.daemons.append(nat64.start(router_ns, self._scratch(), n,
                                            f"{site.lan6_prefix}ffff::1"))
            site.nat64 = True
        _run("ip", "netns", "exec", router_ns, "nft", "-f", "-",
             input=ruleset(nat.value, None if ipv6_only else
                           (site.hosts[0].ip if site.hosts else None), forwarded_port,
                           wan_ip, lan if hairpin else None, port_mapping, carrier=carrier,
                           hairpin_timeout=udp_timeout or 120,
                           nat64=nat64.TUN if ipv6_only else None))
        if port_mapping:
            self.daemons.append(miniupnpd.start(router_ns, self._scratch(), lan, n))
            site.port_mapping = True
        if udp_timeout is not None:  # conntrack is loaded in the namespace by the ruleset
            for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
                _run("ip", "netns", "exec", router_ns, "sysctl", "-q", "-w",
                     f"net.netfilter.{key}={udp_timeout}")
        return site

    def _scratch(self) -> Path:
        """The lab's directory for daemons' files (removed on close)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        return self._workdir

    def reboot_port_mapping(self, site: Site) -> None:
        """Restart `site`'s miniupnpd with its mappings and bindings gone, as a router reboot
        does: kill it by pid, flush its chains and conntrack, start it again (a new epoch)."""
        daemon = next(d for d in self.daemons if site.router.ns in d.args)
        daemon.kill()
        daemon.wait(timeout=10)
        self.daemons.remove(daemon)
        for table, chain in miniupnpd.chains():
            _run("ip", "netns", "exec", site.router.ns, "nft", "flush", "chain", "inet", table,
                 chain)
        self.flush_nat(site)
        assert self._workdir is not None
        self.daemons.append(miniupnpd.start(site.router.ns, self._workdir, site.lan_prefix,
                                            int(site.lan_prefix.split(".")[1])))

    def flush_nat(self, site: Site) -> None:
        """Forget every binding of `site`'s router (`conntrack -F`), as a router reboot does."""
        _run("ip", "netns", "exec", site.router.ns, "conntrack", "-F")

    # --- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        if self.wan is not None:
            self.wan.close()
        for proc in self.processes:
            stop_process(proc)
        for daemon in self.daemons:  # by pid: miniupnpd runs in the foreground
            if daemon.poll() is None:
                daemon.kill()
            daemon.wait(timeout=10)
        self.daemons.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        for ns in reversed(self.namespaces):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain_bridges(ns: str) -> None:
    """Keep bridged frames out of iptables/nftables hooks (br_netfilter), as on a real switch.

    Where the br_netfilter module is loaded, a routed packet sent back out of the bridge it came
    in on (a hairpin) would be filtered a second time as a bridged frame and lost. Where it is
    not loaded these keys do not exist, which is the behaviour wanted anyway.
    """
    for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.bridge.{key}=0"],
                       capture_output=True, timeout=10)


def remove_stale_namespaces(kind: str = "mnlab") -> None:
    """Delete lab namespaces named `<kind><pid>-...` left by a run (process `pid`) that died
    before it could clean up; a live run's namespaces are left alone."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if not ns.startswith(kind):
            continue
        pid = ns[len(kind):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
