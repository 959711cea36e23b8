"""Pure majority vote over reflector observations.

Rules (docs/protocols/reflect.md):
- one vote per observer group: an IPv4 address or an IPv6 /56 (go-libp2p's rule), so many peer
  ids on one machine cannot outvote honest reflectors elsewhere; a group whose members disagree
  casts no vote but still counts as a voter;
- the winner needs a strict majority of the groups counted (more than half), so liars that are
  fewer than half of the groups can never win, colluding or not; a tie has no winner;
- when a strict majority agrees on the IP but no port wins, and the ports seen at that IP
  differ, the disagreement is the signature of an endpoint-dependent (symmetric) mapping
  rather than of lying. (The classifier measures mapping properly; this is only a hint.)
- the tally is ordered by votes, then by `Endpoint`'s total order (IPv4 before IPv6), so any
  mix of address families, however liars choose them, gives one deterministic answer.

`conclude` is what discovery does with a round: too few answers raise InsufficientResponses, no
strict majority raises NoConsensus, and nothing else is raised for any observations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from meshnat.endpoint import Endpoint
from meshnat.errors import InsufficientResponses, NoConsensus


@dataclass(frozen=True, slots=True)
class Observation:
    """What one reflector reported."""

    reflector: str
    """The reflector's peer id."""
    group: str
    """Its observer group (IPv4 address or IPv6 /56), or its peer id when grouping is off."""
    observed: Endpoint
    rtt: float


@dataclass(frozen=True, slots=True)
class Consensus:
    """One discovery round and its evidence. `address` is None unless a strict majority agreed."""

    transport: str
    address: Endpoint | None
    ip: IPv4Address | IPv6Address | None
    """The public IP a strict majority agreed on, even when the ports disagree."""
    tally: tuple[tuple[Endpoint, int], ...]
    """Votes per endpoint, most first (ties by endpoint)."""
    voters: int
    """Observer groups counted."""
    observations: tuple[Observation, ...]
    endpoint_dependent: bool
    """No port won, but a majority agreed on the IP and saw several ports (a symmetric NAT)."""

    @property
    def votes(self) -> int:
        return dict(self.tally).get(self.address, 0) if self.address else 0

    @property
    def dissent(self) -> tuple[Observation, ...]:
        return tuple(o for o in self.observations if o.observed != self.address)

    @property
    def rtts(self) -> dict[str, float]:
        return {o.reflector: o.rtt for o in self.observations}

    def to_json(self) -> dict[str, object]:
        return {
            "transport": self.transport,
            "address": str(self.address) if self.address else None,
            "ip": str(self.ip) if self.ip else None,
            "votes": {str(ep): n for ep, n in self.tally},
            "voters": self.voters,
            "dissent": [
                {"reflector": o.reflector, "observed": str(o.observed)} for o in self.dissent
            ],
            "endpoint_dependent": self.endpoint_dependent,
            "rtt_ms": {o.reflector: round(o.rtt * 1e3, 3) for o in self.observations},
        }


def decide(transport: str, observations: Iterable[Observation]) -> Consensus:
    """Count one vote per observer group and pick the strict-majority endpoint, if any."""
    obs = tuple(observations)
    by_group: dict[str, set[Endpoint]] = {}
    for o in obs:
        by_group.setdefault(o.group, set()).add(o.observed)
    votes = Counter(next(iter(eps)) for eps in by_group.values() if len(eps) == 1)
    ip_votes = Counter(
        next(iter(ips)) for eps in by_group.values() if len(ips := {e.ip for e in eps}) == 1
    )
    voters = len(by_group)
    tally = tuple(sorted(votes.items(), key=lambda kv: (-kv[1], kv[0])))
    address = tally[0][0] if tally and 2 * tally[0][1] > voters else None
    top_ip = ip_votes.most_common(1)
    ip = top_ip[0][0] if top_ip and 2 * top_ip[0][1] > voters else None
    ports_at_ip = {o.observed.port for o in obs if o.observed.ip == ip}
    return Consensus(
        transport=transport,
        address=address,
        ip=ip,
        tally=tally,
        voters=voters,
        observations=obs,
        endpoint_dependent=address is None and ip is not None and len(ports_at_ip) > 1,
    )


def conclude(transport: str, observations: Iterable[Observation], *, min_responses: int,
             asked: int) -> Consensus:
    """`decide` for a discovery round: the Consensus when a strict majority agreed.

    Raises InsufficientResponses (fewer than `min_responses` observations) or NoConsensus
    (carrying the Consensus, whose `ip` may still be known).
    """
    obs = tuple(observations)
    if len(obs) < min_responses:
        raise InsufficientResponses(len(obs), min_responses, asked)
    consensus = decide(transport, obs)
    if consensus.address is None:
        raise NoConsensus(consensus)
    return consensus
