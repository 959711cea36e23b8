"""The sans-IO `TraversalSession` in pairs: every NAT-kind pair on a clean path, then 500
seeded loss/delay/reordering scenarios.

A traversal probes the peer's reflexive endpoint from the node's port and answers whatever
probe reaches it (peer-reflexive candidates), so it needs one direction to get in first:
- both endpoint-independent: always;
- one endpoint-dependent side: only if the easy side lets a new source port of the hard side's
  IP in (no NAT, endpoint-independent or address-dependent filtering, a forwarded port);
  against a port-restricted cone it cannot (that is birthday probing's job);
- both endpoint-dependent, or UDP blocked: never.
Whatever the path: every pair taken is a path to the peer's own socket, nothing is sent after
the hand-over, sends are bounded, and an unproven IP never gets more than 3x what its Offer paid.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshnat.punch.messages import MappingHint
from meshnat.traversal.budget import AMPLIFICATION_RATIO, udp_wire_bytes
from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.core import Retired
from meshnat.traversal.pairs import PairState, PortPair
from tests.pair.harness import Run, run
from tests.pair.kinds import APDF, ORDERED, PORT, NatKind, two_sites
from tests.pair.punch_cores import TXID, rounds
from tests.pair.traversal_cores import TraversalCore, traversal_pair
from tests.support.natsim import PathModel, SimNet

CONFIG = TraversalConfig()
COORDINATION = 0.05  # one way over the relay, seconds
HARD = MappingHint.ENDPOINT_DEPENDENT


def must_connect(a: NatKind, b: NatKind) -> bool:
    if a.blocked or b.blocked:
        return False
    hard = [k.hint is HARD for k in (a, b)]
    if hard == [False, False]:
        return True
    if hard == [True, True]:
        return False
    easy = b if hard[0] else a
    return easy.mapping is None or easy.forwarded or easy.filtering is not APDF


def traversal(a: NatKind, b: NatKind, seed: int, path: PathModel | None = None,
              binding_timeout: float = 120.0) -> tuple[SimNet, TraversalCore, TraversalCore]:
    net, hosts, seen = two_sites(seed, (a, b), binding_timeout=binding_timeout)
    if path is not None:
        net.path = path
    ta, tb = traversal_pair(TXID, (hosts[0].endpoint(PORT), [s for s in seen[1:] if s]),
                            (hosts[1].endpoint(PORT), [s for s in seen[:1] if s]), CONFIG,
                            coordination_delay=COORDINATION)
    return net, ta, tb


def drive(net: SimNet, cores: tuple[TraversalCore, TraversalCore]) -> tuple[Run, float]:
    start = net.now + 0.1
    return run(net, cores, [start, start], until=start + CONFIG.probe_timeout + 1), start


def broken_invariants(net: SimNet, cores: tuple[TraversalCore, TraversalCore],
                      result: Run) -> list[str]:
    broken = []
    for i, (core, trace) in enumerate(zip(cores, result.traces, strict=True)):
        peer = cores[1 - i]
        if len(trace.outcomes) > 1 or trace.after_finish or trace.foreign_sources:
            broken.append(f"side {i}: outcomes {trace.outcomes}, after {trace.after_finish}")
        taken = trace.outcome
        if isinstance(taken, PortPair) and net.who(taken.remote) not in peer.sockets:
            broken.append(f"side {i}: took a pair to {taken.remote}, not the peer's")
        # answers go only to what was heard; probes and keepalives per pair and round
        bound = len(trace.received) + core.session.table.max_pairs * (
            rounds(CONFIG.probe_timeout, CONFIG.probe_interval)
            + rounds(result.end - trace.started, CONFIG.keepalive_interval))
        if len(trace.sent) > bound:
            broken.append(f"side {i}: sent {len(trace.sent)} > {bound}")
        heard_at = {src.ip: t for t, src in reversed(trace.received)}
        unproven: Counter[object] = Counter()
        for t, out in trace.sent:
            if t < heard_at.get(out.dst.ip, float("inf")):
                unproven[out.dst.ip] += udp_wire_bytes(len(out.payload), out.dst.ip)
        paid = core.session.budget.paid
        if any(sent > AMPLIFICATION_RATIO * paid for sent in unproven.values()):
            broken.append(f"side {i}: {unproven} sent unproven, {paid} paid")
    return broken


@pytest.mark.parametrize("pair", ORDERED, ids=lambda p: f"{p[0]}-{p[1]}")
def test_traversal_through_every_pair(pair: tuple[NatKind, NatKind]) -> None:
    net, a, b = traversal(*pair, seed=1)
    result, start = drive(net, (a, b))
    assert broken_invariants(net, (a, b), result) == []
    taken = [t.outcome for t in result.traces]
    if must_connect(*pair):
        assert all(isinstance(p, PortPair) for p in taken) and not a.refused
        assert (result.traces[0].finished_at or 99) - start < 0.5  # a few round trips
        assert (result.traces[1].finished_at or 99) - start < 0.5 + COORDINATION
        assert a.session.taken() is not None and b.session.taken() is not None
    else:
        assert taken == [None, None]
        for side in (a, b):
            assert all(p.state is not PairState.ALIVE for p in side.session.table.pairs())
            assert side.session.retirement(result.end) is Retired.FRUITLESS


@pytest.mark.parametrize("chunk", range(4))
def test_random_traversals_keep_every_invariant(chunk: int) -> None:
    for i in range(chunk, 500, 4):
        rng = random.Random(10_000 + i)
        pair = rng.choice(ORDERED)
        path = PathModel(delay=rng.uniform(0.001, 0.15), jitter=rng.uniform(0, 0.05),
                         loss=rng.choice((0.0, rng.uniform(0, 0.6))),
                         reorder=rng.uniform(0, 0.3), duplicate=rng.uniform(0, 0.1))
        net, a, b = traversal(*pair, seed=i, path=path,
                              binding_timeout=rng.choice((2.0, 30.0, 120.0)))
        result, _ = drive(net, (a, b))
        assert broken_invariants(net, (a, b), result) == [], (i, pair, path)
        assert not a.refused, (i, pair, path)  # what the taker found alive, the peer can take
        if not must_connect(*pair):
            assert [t.outcome for t in result.traces] == [None, None], (i, pair)
        elif path.loss == 0.0:
            assert all(t.outcome is not None for t in result.traces), (i, pair, path)
