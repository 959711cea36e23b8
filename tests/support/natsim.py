"""A pure RFC 4787 NAT simulator on virtual time: no sockets, no trio, one seeded RNG.

Hosts have endpoints (`meshnat.endpoint.Endpoint`); a host is public or sits behind one NAT.
A NAT has a mapping behaviour (RFC 4787 §4.1: which destinations share one external port), a
filtering behaviour (§5: which outside sources may send into a mapping), a port allocation
(§4.2: preserved, sequential or random), hairpinning (§6) on or off, and a UDP binding timeout
(§4.3: a mapping dies after `binding_timeout` idle seconds; outbound traffic refreshes it,
inbound only with `inbound_refresh`). Between public addresses a `PathModel` adds one-way
delay, jitter, loss, reordering and duplication. Every datagram is scheduled on a heap at its
virtual arrival time; the NAT's inbound checks run at that time, not at send time.

    net = SimNet(seed=1)
    nat = net.add_nat(ip_address("198.18.0.10"), mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT)
    a = net.add_host(ip_address("10.1.0.10"), behind=nat)
    net.send(a.endpoint(4001), reflector, b"hi", now=0.0)
    for dst, src, payload in net.deliver_until(net.next_delivery_time()): ...

Lives in tests/ (not the library): only the pair tier uses it. Modelled on Tailscale's
natlab and iroh's patchbay; the lab's Linux NATs (tests/support/netlab.py) are `LAB_KINDS`
in tests/pair/kinds.py.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from meshnat.classify.report import Filtering, Mapping, PortAllocation
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError, LocalProtocolError

IP = IPv4Address | IPv6Address
_EI, _AD = Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT


@dataclass(frozen=True, slots=True, kw_only=True)
class PathModel:
    """What the internet does to a datagram between two public addresses."""

    delay: float = 0.02
    """One-way delay, seconds."""
    jitter: float = 0.0
    """Extra delay drawn uniformly from [0, jitter) seconds per datagram."""
    loss: float = 0.0
    """Probability that a datagram is lost."""
    reorder: float = 0.0
    """Probability that a datagram is held back `reorder_delay` more seconds."""
    reorder_delay: float = 0.05
    duplicate: float = 0.0
    """Probability that a datagram arrives twice (each copy with its own delay)."""

    def __post_init__(self) -> None:
        for name in ("delay", "jitter", "reorder_delay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"PathModel.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("loss", "reorder", "duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"PathModel.{name} must be in [0, 1], got {getattr(self, name)}")


class Delivery(NamedTuple):
    dst: Endpoint
    """The receiving socket (a private endpoint behind a NAT, or a public host's)."""
    src: Endpoint
    """The source as the receiver sees it (after the sender's NAT)."""
    payload: bytes


@dataclass(slots=True)
class Binding:
    """One NAT mapping: a private endpoint's external endpoint for some destinations."""

    private: Endpoint
    public: Endpoint
    key: tuple[Endpoint, object] | None = None
    """The mapping key: the private endpoint and the destination part its behaviour uses."""
    permits: set[object] = field(default_factory=set)
    """Outside sources (per the filtering behaviour) this binding has sent to."""
    last_active: float = 0.0
    static: bool = False
    """A forwarded port: never expires, admits every source (endpoint-independent filtering)."""


class Nat:
    """One NAT device with a single public address; built by `SimNet.add_nat`."""

    def __init__(self, public_ip: IP, *, mapping: Mapping, filtering: Filtering,
                 allocation: PortAllocation, hairpin: bool, binding_timeout: float,
                 inbound_refresh: bool, blocked: bool, port_range: tuple[int, int],
                 rng: random.Random) -> None:
        low, high = port_range
        if not 0 < low <= high < 65536 or binding_timeout <= 0:
            raise ConfigError(f"bad NAT ports {port_range} or timeout {binding_timeout}")
        self.public_ip, self.mapping, self.filtering = public_ip, mapping, filtering
        self.allocation, self.hairpin, self.blocked = allocation, hairpin, blocked
        self.binding_timeout, self.inbound_refresh = binding_timeout, inbound_refresh
        self._ports, self._rng, self._next_port = port_range, rng, low
        self._bindings: dict[tuple[Endpoint, object], Binding] = {}
        self._by_port: dict[int, Binding] = {}
        self._static: dict[Endpoint, Binding] = {}
        self.history: dict[Endpoint, Endpoint] = {}
        """Every external endpoint ever allocated, to its private endpoint."""

    def forward(self, port: int, private: Endpoint) -> None:
        """A static port forward (the lab's PORT_FORWARD): `port` always reaches `private`."""
        if port in self._by_port:
            raise ConfigError(f"port {port} of {self.public_ip} is already mapped")
        binding = Binding(private, Endpoint(self.public_ip, port), static=True)
        self._by_port[port] = self._static[private] = binding
        self.history[binding.public] = private

    def bindings(self, now: float) -> list[Binding]:
        """The live bindings at `now`."""
        return [b for b in list(self._by_port.values()) if self._alive(b, now)]

    def outbound(self, private: Endpoint, dst: Endpoint, now: float) -> Endpoint | None:
        """Translate a datagram leaving the site: its external source, or None (no free port)."""
        static = self._static.get(private)
        key = (private, self._mapping_key(dst))
        binding = static if static is not None and self.mapping is _EI else self._bindings.get(key)
        if binding is None or not self._alive(binding, now):
            port = self._allocate(private.port, now)
            if port is None:
                return None
            binding = Binding(private, Endpoint(self.public_ip, port), key)
            self._bindings[key] = self._by_port[port] = binding
            self.history[binding.public] = private
        binding.permits.add(self._filter_key(dst))
        binding.last_active = now
        return binding.public

    def inbound(self, public: Endpoint, src: Endpoint, now: float) -> Endpoint | str:
        """Translate a datagram arriving at `public` from `src`: the private endpoint it goes
        to, or why it is dropped (`no-mapping`, `filtered`)."""
        binding = self._by_port.get(public.port)
        if binding is None or not self._alive(binding, now):
            return "no-mapping"
        if not binding.static and self.filtering is not Filtering.ENDPOINT_INDEPENDENT \
                and self._filter_key(src) not in binding.permits:
            return "filtered"
        if self.inbound_refresh:
            binding.last_active = now
        return binding.private

    def _mapping_key(self, dst: Endpoint) -> object:
        return None if self.mapping is _EI else dst.ip if self.mapping is _AD else dst

    def _filter_key(self, src: Endpoint) -> object:
        return src.ip if self.filtering is Filtering.ADDRESS_DEPENDENT else src

    def _alive(self, binding: Binding, now: float) -> bool:
        if binding.static or now - binding.last_active < self.binding_timeout:
            return True
        if self._by_port.get(binding.public.port) is binding:  # expired: free its port
            del self._by_port[binding.public.port]
        if binding.key is not None and self._bindings.get(binding.key) is binding:
            del self._bindings[binding.key]
        return False

    def _free(self, port: int, now: float) -> bool:
        binding = self._by_port.get(port)
        return binding is None or not self._alive(binding, now)

    def _allocate(self, wanted: int, now: float) -> int | None:
        low, high = self._ports
        if self.allocation is PortAllocation.PRESERVED and low <= wanted <= high \
                and self._free(wanted, now):
            return wanted
        if self.allocation is PortAllocation.SEQUENTIAL:
            start = self._next_port
        else:  # random, and a preserving NAT whose port is taken (as Linux masquerade does)
            for _ in range(64):
                port = self._rng.randint(low, high)
                if self._free(port, now):
                    return port
            start = self._rng.randint(low, high)
        size = high - low + 1
        for step in range(size):
            port = low + (start - low + step) % size
            if self._free(port, now):
                self._next_port = low + (port - low + 1) % size
                return port
        return None


@dataclass(frozen=True, slots=True)
class Host:
    """A machine with one address, public or behind `nat`."""

    ip: IP
    nat: Nat | None

    def endpoint(self, port: int) -> Endpoint:
        return Endpoint(self.ip, port)


@dataclass(frozen=True, slots=True)
class SimStatistics:
    sent: int
    delivered: int
    dropped: dict[str, int]
    """Datagrams dropped, by reason: `lost`, `lost-first`, `no-mapping`, `filtered`,
    `blocked`, `hairpin-off`, `no-port`, `unroutable`."""


class SimNet:
    """The internet, its hosts and NATs, and the datagrams in flight, all on virtual time."""

    def __init__(self, seed: int, *, path: PathModel | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.path = path or PathModel()
        self._paths: dict[frozenset[IP], PathModel] = {}
        self._hosts: dict[IP, Host] = {}
        self._nats: dict[IP, Nat] = {}
        self._queue: list[tuple[float, int, bool, Endpoint, Endpoint, bytes]] = []
        self._seq = self._sent = self._delivered = 0
        self._dropped: Counter[str] = Counter()
        self._kind_of: Callable[[bytes], Hashable | None] | None = None
        self._first_lost: set[tuple[IP, Hashable]] = set()

    def lose_first(self, kind_of: Callable[[bytes], Hashable | None]) -> None:
        """From now on, lose the first datagram of each kind each host sends (`kind_of` names
        a payload's kind; None: never lost): one lost packet per rung, deterministically."""
        self._kind_of = kind_of

    def add_nat(self, public_ip: IP, *, mapping: Mapping = _EI,
                filtering: Filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT,
                allocation: PortAllocation = PortAllocation.PRESERVED, hairpin: bool = False,
                binding_timeout: float = 120.0, inbound_refresh: bool = False,
                blocked: bool = False, port_range: tuple[int, int] = (1024, 65535)) -> Nat:
        """A NAT with public address `public_ip`; `blocked` drops all UDP leaving the site."""
        self._claim(public_ip)
        nat = Nat(public_ip, mapping=mapping, filtering=filtering, allocation=allocation,
                  hairpin=hairpin, binding_timeout=binding_timeout,
                  inbound_refresh=inbound_refresh, blocked=blocked, port_range=port_range,
                  rng=self.rng)
        self._nats[public_ip] = nat
        return nat

    def add_host(self, ip: IP, *, behind: Nat | None = None) -> Host:
        """A host at `ip`: public without `behind`, else on that NAT's LAN."""
        self._claim(ip)
        host = self._hosts[ip] = Host(ip, behind)
        return host

    def nat(self, public_ip: IP) -> Nat:
        """The NAT whose public address is `public_ip`."""
        return self._nats[public_ip]

    def set_path(self, a: IP, b: IP, model: PathModel) -> None:
        """The path model between public addresses `a` and `b` (both ways)."""
        self._paths[frozenset((a, b))] = model

    def who(self, seen: Endpoint) -> Endpoint | None:
        """The socket behind a source as a receiver saw it: a NAT's external endpoint maps to
        the private one it was (ever) allocated to; a host's own endpoint (a public host's, or
        a LAN neighbour's) is itself; anything else is no one's."""
        nat = self._nats.get(seen.ip)
        if nat is not None:
            return nat.history.get(seen)
        return seen if seen.ip in self._hosts else None

    def send(self, src: Endpoint, dst: Endpoint, payload: bytes, now: float) -> None:
        """Send a datagram from socket `src` (a host's endpoint) to `dst` at virtual `now`."""
        if now < self.now:
            raise LocalProtocolError(f"send at {now} before the simulator's time {self.now}")
        host = self._hosts.get(src.ip)
        if host is None:
            raise LocalProtocolError(f"no host has address {src.ip}")
        self._sent += 1
        kind = self._kind_of(payload) if self._kind_of is not None else None
        if kind is not None and (src.ip, kind) not in self._first_lost:
            self._first_lost.add((src.ip, kind))
            self._dropped["lost-first"] += 1
            return
        nat = host.nat
        if nat is None:
            self._travel(src, dst, payload, now)
            return
        peer = self._hosts.get(dst.ip)
        if peer is not None and peer.nat is nat:  # on the same LAN: no NAT, no internet
            self._schedule(now, True, src, dst, payload)
            return
        if nat.blocked:
            self._dropped["blocked"] += 1
            return
        public = nat.outbound(src, dst, now)
        if public is None:
            self._dropped["no-port"] += 1
        elif dst.ip == nat.public_ip:
            if nat.hairpin:  # RFC 4787 §6: looped back, the source being the mapping
                self._schedule(now, False, public, dst, payload)
            else:
                self._dropped["hairpin-off"] += 1
        else:
            self._travel(public, dst, payload, now)

    def next_delivery_time(self) -> float | None:
        """When the next datagram in flight arrives, or None."""
        return self._queue[0][0] if self._queue else None

    def deliver_until(self, t: float) -> list[Delivery]:
        """Every datagram arriving at or before `t`, in arrival order; time moves to `t`."""
        if t < self.now:
            raise LocalProtocolError(f"deliver_until({t}) before the simulator's time {self.now}")
        out: list[Delivery] = []
        while self._queue and self._queue[0][0] <= t:
            at, _, lan, src, dst, payload = heapq.heappop(self._queue)
            target = dst if lan else self._arrive(src, dst, at)
            if isinstance(target, str):
                self._dropped[target] += 1
            else:
                self._delivered += 1
                out.append(Delivery(target, src, payload))
        self.now = t
        return out

    def statistics(self) -> SimStatistics:
        return SimStatistics(self._sent, self._delivered, dict(self._dropped))

    def _claim(self, ip: IP) -> None:
        if ip in self._hosts or ip in self._nats:
            raise ConfigError(f"address {ip} is already in the simulation")

    def _travel(self, src: Endpoint, dst: Endpoint, payload: bytes, now: float) -> None:
        model = self._paths.get(frozenset((src.ip, dst.ip)), self.path) if self._paths \
            else self.path
        copies = 2 if model.duplicate and self.rng.random() < model.duplicate else 1
        for _ in range(copies):
            if model.loss and self.rng.random() < model.loss:
                self._dropped["lost"] += 1
                continue
            delay = model.delay + (self.rng.uniform(0, model.jitter) if model.jitter else 0.0)
            if model.reorder and self.rng.random() < model.reorder:
                delay += model.reorder_delay
            self._schedule(now + delay, False, src, dst, payload)

    def _schedule(self, at: float, lan: bool, src: Endpoint, dst: Endpoint,
                  payload: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, lan, src, dst, payload))

    def _arrive(self, src: Endpoint, dst: Endpoint, at: float) -> Endpoint | str:
        nat = self._nats.get(dst.ip)
        if nat is not None:
            return nat.inbound(dst, src, at)
        host = self._hosts.get(dst.ip)
        return dst if host is not None and host.nat is None else "unroutable"
