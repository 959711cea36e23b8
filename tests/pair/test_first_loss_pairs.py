"""One lost datagram never fails a rung: the first datagram of each kind each side sends is
lost (`SimNet.lose_first`), and the punch and the traversal still succeed, as on a clean path.

Kinds: a probe and an answer (`ack`), for the punch sessions and the traversal alike. The
stream rungs (reflection over a stream, Offer/Sync, relay reservations and circuits) ride
TCP or QUIC, which retransmit; the UDP reflection client retransmits (RFC 8489's RTO,
tests/mesh/test_discovery.py) and the classification helper sends each probe twice.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import pytest

from meshnat.datagrams import parse_datagram
from meshnat.punch.birthday import HeardOn
from meshnat.punch.core import Heard
from meshnat.punch.messages import Probe as PunchProbe
from meshnat.traversal.messages import Probe as TraversalProbe
from meshnat.traversal.pairs import PortPair
from tests.pair.kinds import CONE, FULL_CONE, PUBLIC, RESTRICTED_CONE, SYMMETRIC, NatKind
from tests.pair.punch_cores import broken_invariants, punch_scenario
from tests.pair.test_traversal_pairs import (
    broken_invariants as traversal_invariants,
)
from tests.pair.test_traversal_pairs import drive, traversal


def probe_kind(message: type[PunchProbe] | type[TraversalProbe]
               ) -> Callable[[bytes], Hashable | None]:
    def kind(payload: bytes) -> Hashable | None:
        probe = parse_datagram(payload, message)
        return None if probe is None else ("ack" if probe.ack else "probe")

    return kind


PUNCHABLE = [(CONE, CONE), (CONE, PUBLIC), (FULL_CONE, CONE),  # both probe: direct
             # one endpoint-dependent side: birthday probing, where the hard side hears only
             # answers (sent twice: `punch.birthday.ANSWER_COPIES`)
             (SYMMETRIC, PUBLIC), (SYMMETRIC, FULL_CONE), (RESTRICTED_CONE, SYMMETRIC)]


@pytest.mark.parametrize("pair", PUNCHABLE, ids=lambda p: f"{p[0]}-{p[1]}")
def test_a_punch_succeeds_when_the_first_probe_and_answer_of_each_side_are_lost(
        pair: tuple[NatKind, NatKind]) -> None:
    s = punch_scenario(*pair, seed=3)
    s.net.lose_first(probe_kind(PunchProbe))
    result = s.run()
    assert broken_invariants(s, result) == []
    outcomes = [s.trace(result, i) for i in (0, 1)]
    assert all(t is not None and isinstance(t.outcome, Heard | HeardOn) for t in outcomes)
    assert s.net.statistics().dropped.get("lost-first", 0) >= 2  # the loss did happen


@pytest.mark.parametrize("pair", [(CONE, CONE), (CONE, PUBLIC), (PUBLIC, CONE)],
                         ids=lambda p: f"{p[0]}-{p[1]}")
def test_a_traversal_takes_a_pair_when_the_first_probe_and_answer_of_each_side_are_lost(
        pair: tuple[NatKind, NatKind]) -> None:
    net, a, b = traversal(*pair, seed=3)
    net.lose_first(probe_kind(TraversalProbe))
    result, _ = drive(net, (a, b))
    assert traversal_invariants(net, (a, b), result) == []
    assert all(isinstance(t.outcome, PortPair) for t in result.traces)
    assert net.statistics().dropped.get("lost-first", 0) >= 2


def test_losing_the_first_of_a_kind_loses_only_that_one() -> None:
    s = punch_scenario(CONE, CONE, seed=3)
    s.net.lose_first(lambda payload: "all")
    hosts = [side.host.endpoint(4001) for side in s.sides]
    for _ in range(3):
        s.net.send(hosts[0], s.sides[1].offer.udp[0], b"x", s.net.now)
    assert s.net.statistics().dropped.get("lost-first") == 1
