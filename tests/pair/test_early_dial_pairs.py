"""The punch initiator's early QUIC dial (`traversal/early.py`) through the simulator, on
virtual time: the Initial leaves with the first probe round and arrives half a direct round
trip sooner than a dial on the peer's first probe; a first copy the far NAT dropped is replayed
when the peer's probe arrives (not ~1 s later, at qh3's retransmission); it is charged to the
punch's budget like a probe, and abandoned, silently, when its target stays unheard.

The QUIC handshake itself is not simulated: the responder's outcome is the first Initial to
reach its port (the handshake takes one direct round trip from there, either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from meshnat.endpoint import Endpoint
from meshnat.punch.messages import MappingHint, Offer
from meshnat.traversal.budget import AMPLIFICATION_RATIO, udp_wire_bytes
from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.early import EARLY_WINDOW
from meshnat.traversal.pairs import PortPair
from meshnat.wire import encode, frame_stream
from tests.pair.harness import Run, run
from tests.pair.kinds import CONE, PORT, RESTRICTED_CONE, NatKind, two_sites
from tests.pair.punch_cores import TXID
from tests.pair.traversal_cores import PunchDialer, PunchListener
from tests.support.natsim import PathModel, SimNet

CONFIG = TraversalConfig()
COORDINATION = 0.05
QUIC_PTO = 1.0
"""qh3's first Initial retransmission: 0.333 s initial RTT + 4 x its half (RFC 9002)."""
PAID = len(frame_stream(encode(Offer(
    TXID, tuple(Endpoint.parse(f"198.18.0.{i}:4001") for i in (11, 12)),
    (Endpoint.parse("198.18.0.11:4001"),), MappingHint.ENDPOINT_INDEPENDENT,
    padding=bytes(512)))))
"""What a responder's Offer with the default padding pays the initiator's budget."""
EPS = 1e-6


def punch(kinds: tuple[NatKind, NatKind], *, early: bool, delay: float = 0.02,
          skew: float = 0.0, paid: int = PAID, extra: Sequence[Endpoint] = (),
          responder_starts: bool = True) -> tuple[SimNet, PunchDialer, PunchListener, Run,
                                                  float]:
    """Initiator and responder behind `kinds`, each told the other's reflexive endpoint
    (`extra` candidates of the responder's first), the responder starting `skew` s after the
    initiator (Sync's arrival), on a clean path of `delay` one way."""
    net, hosts, seen = two_sites(1, kinds)
    net.path = PathModel(delay=delay)
    assert seen[0] is not None and seen[1] is not None
    dialer = PunchDialer(TXID, hosts[0].endpoint(PORT), [*extra, seen[1]], CONFIG,
                         early=early, coordination_delay=COORDINATION, paid=paid)
    listener = PunchListener(TXID, hosts[1].endpoint(PORT), [seen[0]], CONFIG,
                             coordination_delay=COORDINATION, paid=paid)
    dialer.peer, listener.peer = listener, dialer
    start = net.now + 0.1
    result = run(net, [dialer, listener],
                 [start, start + skew if responder_starts else start + 60],
                 until=start + CONFIG.probe_timeout + 1)
    return net, dialer, listener, result, start


@pytest.mark.parametrize("delay", [0.005, 0.01, 0.04])
@pytest.mark.parametrize("kinds", [(CONE, CONE), (RESTRICTED_CONE, CONE)],
                         ids=lambda k: f"{k[0]}-{k[1]}")
def test_the_early_initial_arrives_half_a_direct_round_trip_sooner(
        kinds: tuple[NatKind, NatKind], delay: float) -> None:
    """Both start together (Sync's RTT/2): the Initial reaches the responder with the first
    probe, one way after the start; dialled on the peer's first probe it took two ways."""
    _, dialer, listener, result, start = punch(kinds, early=True, delay=delay)
    _, _, old_listener, old, _ = punch(kinds, early=False, delay=delay)
    arrived = result.traces[1].finished_at
    old_arrived = old.traces[1].finished_at
    assert arrived is not None and old_arrived is not None
    assert arrived - start == pytest.approx(delay, abs=EPS)
    assert old_arrived - start == pytest.approx(2 * delay, abs=EPS)
    assert isinstance(result.traces[0].outcome, PortPair)
    # the Initial, and its replay as the peer's probe arrived (the server drops the copy)
    assert [t - start for t, _ in dialer.initials] == pytest.approx([0.0, delay], abs=EPS)
    assert len(listener.initials) == 2 and len(old_listener.initials) == 1
    assert dialer.session.early_connection(dialer.initials[0][1])  # the pair's connection
    assert dialer.abandoned == []


def test_a_first_initial_the_far_nat_dropped_is_replayed_when_the_peers_probe_arrives() -> None:
    """The initiator starts 100 ms early (a late Sync): its first Initial meets a NAT with no
    mapping toward it and is dropped; the replay goes as the peer's first probe arrives, so
    the Initial gets in one way later, as a dial on that probe would, not at qh3's ~1 s PTO."""
    delay, skew = 0.02, 0.1
    _, dialer, listener, result, start = punch((CONE, CONE), early=True, delay=delay,
                                                skew=skew)
    heard = start + skew + delay  # the responder's first probe reaches the initiator
    assert [t for t, _ in dialer.initials] == pytest.approx([start, heard], abs=EPS)
    assert listener.initials == pytest.approx([heard + delay], abs=EPS)  # the first: dropped
    assert result.traces[1].finished_at == pytest.approx(heard + delay, abs=EPS)


def test_the_early_initial_is_charged_to_the_budget_and_skipped_without_room() -> None:
    """An unproven IP gets at most 3x what the peer paid: the Initial counts; with too little
    paid there is no early dial, and the Initial goes on the peer's first probe as before."""
    for paid, early_sent in ((PAID, True), (400, False)):
        _, dialer, _, result, start = punch((CONE, CONE), early=True, paid=paid)
        assert (dialer.initials[0][0] == start) is early_sent
        heard = min(t for t, _ in result.traces[0].received)
        unproven = sum(udp_wire_bytes(len(out.payload), out.dst.ip)
                       for t, out in result.traces[0].sent if t < heard)
        assert unproven <= AMPLIFICATION_RATIO * paid
        assert isinstance(result.traces[0].outcome, PortPair)


def test_an_unheard_target_is_abandoned_before_quics_first_retransmission() -> None:
    """The responder never probes: one Initial went, the dial is abandoned at EARLY_WINDOW,
    before qh3 would resend it; nothing reached the responder's port."""
    _, dialer, listener, _, start = punch((CONE, CONE), early=True, responder_starts=False)
    assert [t for t, _ in dialer.initials] == [start]
    assert dialer.abandoned == pytest.approx([start + EARLY_WINDOW], abs=EPS)
    assert EARLY_WINDOW < QUIC_PTO
    assert listener.initials == []


def test_a_peer_heard_on_another_candidate_first_gets_a_dial_of_its_own() -> None:
    """The best candidate is not the peer's (nobody answers there): the peer is heard on its
    next one, that pair is taken, the early dial abandoned and the pair dialled."""
    nobody = Endpoint.parse("198.18.0.99:4001")
    _, dialer, listener, result, _ = punch((CONE, CONE), early=True, extra=[nobody])
    taken = result.traces[0].outcome
    assert isinstance(taken, PortPair) and taken.remote != nobody
    assert [dst for _, dst in dialer.initials] == [nobody, taken.remote]
    assert dialer.abandoned == [dialer.initials[1][0]]
    assert not dialer.session.early_connection(taken.remote)
    assert listener.initials == [pytest.approx(dialer.initials[1][0] + 0.02, abs=EPS)]
