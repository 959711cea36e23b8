"""`PairCore` adapters for the birthday-probing sessions (src/meshnat/punch/birthday.py).

Each adapter does what the trio driver in punch/udp.py does, minus the sockets: probes are
framed and encoded as on the wire, datagrams that are not a Probe are dropped, and the
session's outcome is handed on as `Finished`.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from meshnat.datagrams import parse_datagram
from meshnat.endpoint import Endpoint
from meshnat.punch.birthday import (
    ANSWER_COPIES,
    EasySideSession,
    HardSideSession,
    HeardOn,
    SendFrom,
)
from meshnat.punch.config import PunchConfig
from meshnat.punch.core import GaveUp, Heard, SendProbe
from meshnat.punch.messages import MappingHint, Offer, Probe
from meshnat.punch.plan import PunchPlan, Role, UdpPath, plan_punch
from meshnat.wire import encode, frame_datagram
from meshnat.wire.codec import TXID_SIZE
from tests.pair.harness import Finished, Outgoing, PairCore, Run, Trace, run
from tests.pair.kinds import PORT, NatKind, two_sites
from tests.support.natsim import Host, PathModel, SimNet


@functools.cache  # a punch has only a few distinct probes: encode each once
def wire(probe: Probe) -> bytes:
    return frame_datagram(encode(probe))


class SessionCore:
    """A birthday session on `count` sockets: socket i is `local.ip`:`local.port + i`. An
    `EasySideSession` has one (the node's shared UDP port); a `HardSideSession` one per
    mapping it opens (with one socket and a short refresh interval: a plain UDP punch)."""

    def __init__(self, session: EasySideSession | HardSideSession, local: Endpoint,
                 count: int = 1) -> None:
        self.session, self.local = session, local
        self._ports = range(local.port, local.port + count)
        self.sockets = frozenset(Endpoint(local.ip, port) for port in self._ports)

    def start(self, now: float) -> None:
        self.session.start(now)

    def feed(self, local: Endpoint, src: Endpoint, payload: bytes, now: float) -> None:
        probe = parse_datagram(payload, Probe)
        if probe is None:
            return
        if isinstance(self.session, EasySideSession):
            self.session.receive_probe(probe, src, now)
        else:
            self.session.receive_probe(self._ports.index(local.port), probe, src, now)

    def handle_timer(self, now: float) -> None:
        self.session.handle_timer(now)

    def get_timer(self) -> float | None:
        return self.session.get_timer()

    def drain(self) -> list[Outgoing | Finished]:
        out: list[Outgoing | Finished] = []
        while (action := self.session.next_action()) is not None:
            match action:
                case SendProbe(dst=dst, probe=probe):
                    out.append(Outgoing(self.local, dst, wire(probe)))
                case SendFrom(socket=socket, dst=dst, probe=probe):
                    src = Endpoint(self.local.ip, self._ports[socket])
                    out.append(Outgoing(src, dst, wire(probe)))
                case Heard() | HeardOn() | GaveUp():
                    out.append(Finished(action))
        return out


def expected(initiator: NatKind, responder: NatKind) -> str:
    """What a punch between these kinds must come to: `punched` (both endpoint-independent),
    `birthday` (one endpoint-dependent), `relay` (both: the plan gives up) or `no-udp` (a
    side's UDP is blocked)."""
    if initiator.blocked or responder.blocked:
        return "no-udp"
    hard = sum(k.hint is MappingHint.ENDPOINT_DEPENDENT for k in (initiator, responder))
    return ("punched", "birthday", "relay")[hard]


def heard_from(outcome: object) -> Endpoint | None:
    """The peer endpoint a session's outcome names, or None when it gave up."""
    match outcome:
        case Heard(remote=remote) | HeardOn(remote=remote):
            return remote
    return None


TXID = bytes(range(TXID_SIZE))
"""The punch's txid, shared over the (authenticated) coordination stream."""
HARD_BASE_PORT = 32768
"""First local port of the hard side's birthday sockets (Linux's ephemeral range)."""


@dataclass(frozen=True, slots=True)
class Side:
    kind: NatKind
    host: Host
    offer: Offer
    plan: PunchPlan
    core: SessionCore | None
    """None when the plan runs no UDP path (gave up, or the peer has no UDP candidate)."""
    start: float
    max_sent: int
    """The most datagrams the core may send: its probe budget, or one round per interval
    until its deadline, plus the answers to what it heard (from the plan, not the core)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    net: SimNet
    sides: tuple[Side, Side]
    """Initiator, responder."""

    def run(self, *, until: float | None = None, extra: Sequence[PairCore] = (),
            extra_start: float = 0.0) -> Run:
        """Run the sides' cores (and `extra` ones) to `until` (default: past every deadline)."""
        sides = [s for s in self.sides if s.core is not None]
        cores: list[PairCore] = [s.core for s in sides if s.core is not None]
        end = max((s.start + s.plan.backstop for s in sides), default=self.net.now)
        return run(self.net, [*cores, *extra],
                   [s.start for s in sides] + [extra_start] * len(extra),
                   until=end if until is None else until)

    def trace(self, result: Run, side: int) -> Trace | None:
        """The trace of side 0 (initiator) or 1 (responder), None if it ran no core."""
        ran = [i for i, s in enumerate(self.sides) if s.core is not None]
        return result.traces[ran.index(side)] if side in ran else None


def punch_scenario(initiator: NatKind, responder: NatKind, *, seed: int,
                   path: PathModel | None = None, config: PunchConfig | None = None,
                   skew: float = 0.0, binding_timeout: float = 120.0,
                   port_range: tuple[int, int] = (1024, 65535)) -> Scenario:
    """Two nodes behind NATs of the given kinds, each told the other's reflexive endpoint (as
    discovery would, over a clean path), planned with `plan_punch` from the two Offers and
    started together (the initiator `skew` seconds late), on a path modelled by `path`."""
    config = config or PunchConfig()
    kinds = (initiator, responder)
    net, hosts, seen = two_sites(seed, kinds, binding_timeout=binding_timeout,
                                 port_range=port_range)
    offers = [Offer(TXID, () if ep is None else (ep,), (), kind.hint)
              for kind, ep in zip(kinds, seen, strict=True)]
    if path is not None:
        net.path = path
    start = net.now + 0.1
    sides = []
    for i, role in enumerate((Role.INITIATOR, Role.RESPONDER)):
        ours, theirs = offers[i], offers[1 - i]
        plan = plan_punch(ours, theirs, role, config)
        core, bound = session_core(plan, hosts[i], theirs, config,
                                   random.Random(seed * 2 + i), port_range)
        sides.append(Side(kinds[i], hosts[i], ours, plan, core, start + skew * (i == 0), bound))
    return Scenario(net, (sides[0], sides[1]))


def session_core(plan: PunchPlan, host: Host, theirs: Offer, config: PunchConfig,
                 rng: random.Random, port_range: tuple[int, int]
                 ) -> tuple[SessionCore | None, int]:
    """The pure session this side's plan runs on UDP, and the most it may send. The traversal
    path (no pure core yet) is stood in for by `direct_core`."""
    if plan.give_up is not None or plan.udp is None:
        return None, 0
    if plan.udp is UdpPath.TRAVERSAL:
        return direct_core(host, theirs, config), \
            len(theirs.udp) * rounds(plan.path_timeout, config.probe_interval) + ANSWER_COPIES
    assert plan.birthday is not None
    wanted, per_tick, interval = plan.birthday.wanted, plan.birthday.per_tick, \
        plan.birthday.interval
    if plan.udp is UdpPath.BIRTHDAY_HARD:
        session = HardSideSession(TXID, theirs.udp[:1], sockets=wanted,
                                  refresh_interval=interval, timeout=plan.path_timeout)
        return SessionCore(session, host.endpoint(HARD_BASE_PORT), wanted), \
            wanted * rounds(plan.path_timeout, interval) + ANSWER_COPIES
    easy = EasySideSession(TXID, theirs.udp[0].ip, rng=rng, max_probes=wanted,
                           probes_per_tick=per_tick, tick=interval,
                           timeout=plan.path_timeout, port_range=port_range)
    return SessionCore(easy, host.endpoint(PORT)), wanted + ANSWER_COPIES


def rounds(timeout: float, interval: float) -> int:
    """Rounds of a session ticking every `interval` from its start until `timeout`."""
    return math.floor(timeout / interval + 1e-9) + 1


def direct_core(host: Host, theirs: Offer, config: PunchConfig) -> SessionCore:
    """A plain two-sided punch from the node's port to the peer's UDP candidates: one socket
    of a hard-side session, probing every `probe_interval` until `punch_timeout`."""
    session = HardSideSession(TXID, theirs.udp, sockets=1,
                              refresh_interval=config.probe_interval,
                              timeout=config.punch_timeout)
    return SessionCore(session, host.endpoint(PORT))


def broken_invariants(scenario: Scenario, result: Run) -> list[str]:
    """What a run did that no run may do, whatever the NATs and the path: hear from an
    endpoint that is not the peer's, finish late, twice or not at all, act after finishing,
    send from a socket it does not own, or send more than its bound."""
    broken: list[str] = []
    for i, side in enumerate(scenario.sides):
        trace = scenario.trace(result, i)
        if trace is None:
            continue
        peer = scenario.sides[1 - i]
        peer_sockets = peer.core.sockets if peer.core else {peer.host.endpoint(PORT)}
        timeout = side.plan.path_timeout
        if len(trace.outcomes) != 1:
            broken.append(f"side {i}: {len(trace.outcomes)} outcomes")
        elif (trace.finished_at or 0.0) > side.start + timeout + 1e-9:
            broken.append(f"side {i}: finished at {trace.finished_at}, after its deadline")
        remote = heard_from(trace.outcome)
        if remote is not None and scenario.net.who(remote) not in peer_sockets:
            broken.append(f"side {i}: heard {remote}, which is not the peer's")
        if trace.after_finish:
            broken.append(f"side {i}: acted after finishing: {trace.after_finish[:2]}")
        if trace.foreign_sources:
            broken.append(f"side {i}: sent from sockets it does not own")
        if len(trace.sent) > side.max_sent:
            broken.append(f"side {i}: sent {len(trace.sent)} > {side.max_sent}")
    return broken
