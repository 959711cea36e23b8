"""`NatReport`: what the mesh measured about this node's NAT (RFC 4787 terms).

Every fact is tri-state: a value when measured, None when it was not (or could not be).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from meshnat.endpoint import Endpoint


class Mapping(StrEnum):
    """RFC 4787 §4.1: how the NAT reuses a mapping across destinations."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(StrEnum):
    """RFC 4787 §5: which outside sources may send into an existing mapping."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class PortAllocation(StrEnum):
    """RFC 4787 §4.2.2-4.2.3: how external ports are chosen."""

    PRESERVED = "preserved"
    SEQUENTIAL = "sequential"
    RANDOM = "random"


class NatType(StrEnum):
    """The classic name, derived from the measured facts (never measured directly)."""

    OPEN = "open"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp-blocked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One probe and what came of it."""

    test: str
    """`mapping`, `filtering`, `hairpin` or `udp`."""
    target: str
    """Whom the probe went to (or came from), e.g. `reflector-a alt port`."""
    result: str
    """What was seen: an endpoint, `received`, `not received`, `no answer`."""
    elapsed_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NatReport:
    """What the mesh learned about this node's UDP NAT. None always means "not measured"."""

    local: Endpoint
    """The node's UDP socket, whose mapping was measured."""
    version: int = 4
    """The IP family measured (a dual-stack node has one report per family)."""
    udp_blocked: bool | None = None
    behind_nat: bool | None = None
    mapping: Mapping | None = None
    filtering: Filtering | None = None
    port_allocation: PortAllocation | None = None
    port_delta: int | None = None
    """The step between successive mappings when allocation is sequential."""
    hairpin: bool | None = None
    public_addrs: tuple[Endpoint, ...] = ()
    """Every mapping observed for the socket, first seen first."""
    evidence: tuple[Evidence, ...] = field(default=())
    notes: tuple[str, ...] = ()
    """Why a fact could not be measured (e.g. too few reflectors)."""
    elapsed: float = 0.0
    """Seconds the classification took."""

    @property
    def nat_type(self) -> NatType:
        if self.udp_blocked:
            return NatType.UDP_BLOCKED
        if self.behind_nat is False and self.filtering in (None, Filtering.ENDPOINT_INDEPENDENT):
            return NatType.OPEN
        if self.mapping in (Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT):
            return NatType.SYMMETRIC
        if self.mapping is Mapping.ENDPOINT_INDEPENDENT:
            return {
                Filtering.ENDPOINT_INDEPENDENT: NatType.FULL_CONE,
                Filtering.ADDRESS_DEPENDENT: NatType.RESTRICTED_CONE,
                Filtering.ADDRESS_AND_PORT_DEPENDENT: NatType.PORT_RESTRICTED_CONE,
                None: NatType.UNKNOWN,
            }[self.filtering]
        return NatType.UNKNOWN

    def __str__(self) -> str:
        def fmt(v: object) -> str:
            return "?" if v is None else str(v)

        return (f"type={self.nat_type} map={fmt(self.mapping)} filter={fmt(self.filtering)} "
                f"ports={fmt(self.port_allocation)} hairpin={fmt(self.hairpin)} "
                f"public={','.join(map(str, self.public_addrs)) or '?'}")

    def to_json(self) -> dict[str, object]:
        """Stable keys for `meshnat probe --json`."""
        return {
            "ip_version": self.version,
            "nat_type": str(self.nat_type),
            "mapping": self.mapping and str(self.mapping),
            "filtering": self.filtering and str(self.filtering),
            "port_allocation": self.port_allocation and str(self.port_allocation),
            "port_delta": self.port_delta,
            "hairpin": self.hairpin,
            "udp_blocked": self.udp_blocked,
            "behind_nat": self.behind_nat,
            "local": str(self.local),
            "public_addrs": [str(e) for e in self.public_addrs],
            "evidence": [
                {"test": e.test, "target": e.target, "result": e.result,
                 "elapsed_ms": round(e.elapsed_ms, 3)} for e in self.evidence
            ],
            "notes": list(self.notes),
            "elapsed_ms": round(self.elapsed * 1e3, 3),
        }
