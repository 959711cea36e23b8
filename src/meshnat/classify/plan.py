"""Pure choice of which reflectors a classification run uses, and for which test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshnat.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class ReflectorPorts:
    """A reflector's UDP endpoints: the primary (QUIC) one and its second port, if known."""

    name: str
    primary: Endpoint
    alt: Endpoint | None


@dataclass(frozen=True, slots=True)
class ProbePlan:
    """A: asked first, sends the same-IP filtering probe; B: another IP, for mapping;
    C: the other-IP filtering probe, on an IP the socket never sends to when one exists."""

    a: ReflectorPorts
    b: ReflectorPorts | None
    c: ReflectorPorts | None
    notes: tuple[str, ...]

    def mapping_destinations(self) -> list[Endpoint]:
        """Where the node's socket sends observe requests after A's primary, in order."""
        hops = [self.a.alt]
        if self.b is not None:
            hops += [self.b.primary, self.b.alt]
        return [h for h in hops if h is not None]


def make_probe_plan(reflectors: Sequence[ReflectorPorts]) -> ProbePlan | None:
    """Pick A (preferring one with a second port), B and C on other IPs; None if empty.

    Mapping needs two IPs and two ports on one of them. Filtering needs A and a second IP; a
    third IP (C) keeps the other-IP probe clean of any earlier traffic to B (a run repeated
    within the NAT's timeout would otherwise read an address-dependent filter as open).
    What cannot be measured with these reflectors is said in `notes`.
    """
    if not reflectors:
        return None
    ordered = sorted(reflectors, key=lambda r: r.alt is None)  # stable: keeps caller order
    a = ordered[0]
    others = [r for r in ordered if r.primary.ip != a.primary.ip]
    b = others[0] if others else None
    thirds = [r for r in others if b is not None and r.primary.ip != b.primary.ip]
    c = thirds[0] if thirds else b
    notes = []
    if b is None:
        notes.append("need reflectors on two distinct IP addresses for mapping and "
                     "endpoint-independent filtering; have only "
                     f"{a.primary.ip}")
    elif not thirds:
        notes.append("no third reflector IP: the other-IP filtering probe reuses B, so a run "
                     "repeated within the NAT's timeout may read address-dependent as open")
    if a.alt is None and (b is None or b.alt is None):
        notes.append("no reflector offers a second UDP port (ProbeHelperService)")
    return ProbePlan(a, b, c, tuple(notes))
