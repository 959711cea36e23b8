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
    """A: asked first, and sends the other-port filtering probe; B: another IP."""

    a: ReflectorPorts
    b: ReflectorPorts | None
    notes: tuple[str, ...]

    def mapping_destinations(self) -> list[Endpoint]:
        """Where the node's socket sends observe requests after A's primary, in order."""
        hops = [self.a.alt]
        if self.b is not None:
            hops += [self.b.primary, self.b.alt]
        return [h for h in hops if h is not None]


def make_probe_plan(reflectors: Sequence[ReflectorPorts]) -> ProbePlan | None:
    """Pick A (preferring one with a second port) and B on a different IP; None if empty.

    Mapping needs two IPs and two ports on one of them; filtering needs A's second port and B.
    What cannot be measured with these reflectors is said in `notes`.
    """
    if not reflectors:
        return None
    ordered = sorted(reflectors, key=lambda r: r.alt is None)  # stable: keeps caller order
    a = ordered[0]
    others = [r for r in ordered if r.primary.ip != a.primary.ip]
    b = others[0] if others else None
    notes = []
    if b is None:
        notes.append("need reflectors on two distinct IP addresses for mapping and "
                     "endpoint-independent filtering; have only "
                     f"{a.primary.ip}")
    if a.alt is None and (b is None or b.alt is None):
        notes.append("no reflector offers a second UDP port (ProbeHelperService)")
    return ProbePlan(a, b, tuple(notes))
