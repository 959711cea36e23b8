"""The NAT kinds the pair tier runs: the lab's (tests/support/netlab.py) and a few more only
a simulator can build, as RFC 4787 behaviours; and sites of those kinds in a `SimNet`."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

from meshnat.classify.report import Filtering, Mapping, PortAllocation
from meshnat.endpoint import Endpoint
from meshnat.punch.messages import MappingHint
from tests.support.natsim import Host, SimNet
from tests.support.netlab import Nat

EIM, ADM, APDM = (Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT,
                  Mapping.ADDRESS_AND_PORT_DEPENDENT)
EIF, ADF, APDF = (Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT,
                  Filtering.ADDRESS_AND_PORT_DEPENDENT)
PORT = 4001
"""The node's UDP (QUIC) listen port, as in the lab."""
REFLECTOR = Endpoint.parse("198.18.0.2:4001")


@dataclass(frozen=True, slots=True)
class NatKind:
    name: str
    mapping: Mapping | None
    """None: a public host, no NAT at all."""
    filtering: Filtering = APDF
    allocation: PortAllocation = PortAllocation.PRESERVED
    blocked: bool = False
    """All UDP leaving the site is dropped."""
    forwarded: bool = False
    """The node's port is forwarded to it (endpoint-independent filtering on that port)."""

    @property
    def hint(self) -> MappingHint:
        """What the node's NatReport would say of its mapping (UDP blocked: not measured)."""
        if self.blocked:
            return MappingHint.UNKNOWN
        if self.mapping in (None, EIM):
            return MappingHint.ENDPOINT_INDEPENDENT
        return MappingHint.ENDPOINT_DEPENDENT

    def __str__(self) -> str:
        return self.name


PUBLIC = NatKind("public", None)
CONE = NatKind(Nat.CONE.value, EIM)  # Linux masquerade + stateful firewall
SYMMETRIC = NatKind(Nat.SYMMETRIC.value, APDM, allocation=PortAllocation.RANDOM)
UDP_BLOCKED = NatKind(Nat.UDP_BLOCKED.value, EIM, blocked=True)
PORT_FORWARD = NatKind(Nat.PORT_FORWARD.value, EIM, forwarded=True)
LAB_KINDS = (PUBLIC, CONE, SYMMETRIC, UDP_BLOCKED, PORT_FORWARD)

FULL_CONE = NatKind("full-cone", EIM, EIF)
RESTRICTED_CONE = NatKind("restricted-cone", EIM, ADF)
ADDRESS_DEPENDENT = NatKind("address-dependent", ADM, ADF, PortAllocation.RANDOM)
SYMMETRIC_SEQUENTIAL = NatKind("symmetric-sequential", APDM,
                               allocation=PortAllocation.SEQUENTIAL)
EXTRA_KINDS = (FULL_CONE, RESTRICTED_CONE, ADDRESS_DEPENDENT, SYMMETRIC_SEQUENTIAL)
ALL_KINDS = LAB_KINDS + EXTRA_KINDS

ORDERED = [(a, b) for a in ALL_KINDS for b in ALL_KINDS]
"""Every ordered pair (initiator, responder) of kinds: 25 of the lab's, 81 in all."""


def add_site(net: SimNet, kind: NatKind, n: int, *, binding_timeout: float = 120.0,
             port_range: tuple[int, int] = (1024, 65535)) -> Host:
    """Site number `n` (1-99) of `kind`: its node's host, public or behind a fresh NAT."""
    if kind.mapping is None:
        return net.add_host(ip_address(f"198.18.0.{100 + n}"))
    nat = net.add_nat(ip_address(f"198.18.0.{10 + n}"), mapping=kind.mapping,
                      filtering=kind.filtering, allocation=kind.allocation,
                      blocked=kind.blocked, binding_timeout=binding_timeout,
                      port_range=port_range)
    host = net.add_host(ip_address(f"10.{n}.0.10"), behind=nat)
    if kind.forwarded:
        nat.forward(PORT, host.endpoint(PORT))
    return host


def discover(net: SimNet, local: Endpoint, reflector: Endpoint = REFLECTOR) -> Endpoint | None:
    """The endpoint a public reflector sees `local` as (what discovery would tell the peer),
    or None when nothing arrives. Moves the simulator's time past the arrival."""
    net.send(local, reflector, b"reflect", net.now)
    for _ in range(100):
        arrival = net.next_delivery_time()
        if arrival is None:
            return None
        for dst, src, _payload in net.deliver_until(arrival):
            if dst == reflector:
                return src
    raise AssertionError("discovery: the simulator kept delivering")


def two_sites(seed: int, kinds: tuple[NatKind, NatKind], *, binding_timeout: float = 120.0,
              port_range: tuple[int, int] = (1024, 65535)
              ) -> tuple[SimNet, tuple[Host, Host], tuple[Endpoint | None, Endpoint | None]]:
    """A simulator with a reflector and sites 1 and 2 of `kinds`, each node's port already
    discovered over a clean path (None: nothing arrived): the net, the hosts, what was seen."""
    net = SimNet(seed)
    net.add_host(REFLECTOR.ip)
    a, b = (add_site(net, kind, n + 1, binding_timeout=binding_timeout, port_range=port_range)
            for n, kind in enumerate(kinds))
    return net, (a, b), (discover(net, a.endpoint(PORT)), discover(net, b.endpoint(PORT)))
