"""TraversalSession: the rules of one traversal, on virtual time (no trio, no sockets)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from itertools import pairwise

import pytest

from meshnat.endpoint import Endpoint
from meshnat.errors import PairExpired, PairTaken
from meshnat.traversal.budget import SendBudget
from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.core import (
    Action,
    Dial,
    Expired,
    Expiry,
    Listen,
    ProbeCounters,
    ProbeKind,
    Retired,
    SendProbe,
    StopCarrier,
    TraversalSession,
)
from meshnat.traversal.messages import ALREADY_TAKEN, NO_MATCHING_PAIR, Probe, Take
from meshnat.traversal.pairs import PairId, PairState
from meshnat.wire import decode, unframe_datagram

TXID = bytes.fromhex("1a2b3c4d") + bytes(12)
PEER = Endpoint(ip_address("198.18.0.21"), 51000)
LAN = Endpoint(ip_address("10.2.0.10"), 51000)
US = Endpoint(ip_address("198.18.0.20"), 40321)
CONFIG = TraversalConfig()
FIRST, SECOND = PairId("1a2b3c4d", 1), PairId("1a2b3c4d", 2)


def session(*candidates: Endpoint, proven: bool = True, config: TraversalConfig = CONFIG,
            paid: int = 100_000, counters: ProbeCounters | None = None) -> TraversalSession:
    candidates = candidates or (PEER, LAN)
    ips = [c.ip for c in candidates] if proven else []
    s = TraversalSession(TXID, 40321, config, 0.0,
                         budget=SendBudget(paid=paid, proven=ips), counters=counters)
    s.start(candidates, 0.0)
    return s


def drain(s: TraversalSession) -> list[Action]:
    actions = []
    while (action := s.next_action()) is not None:
        actions.append(action)
    return actions


def run(s: TraversalSession, until: float) -> list[tuple[float, Action]]:
    """Fire the session's timers up to `until`; every action with the time it came out."""
    out = [(s.started, a) for a in drain(s)]
    for _ in range(10_000):
        timer = s.get_timer()
        if timer is None or timer > until:
            return out
        s.handle_timer(timer)
        out.extend((timer, a) for a in drain(s))
    raise AssertionError("the session's timer never passed `until`")


def probes(out: list[tuple[float, Action]], kind: ProbeKind,
           dst: Endpoint = PEER) -> list[float]:
    return [round(t, 6) for t, a in out
            if isinstance(a, SendProbe) and a.kind is kind and a.dst == dst]


def alive(s: TraversalSession, at: float = 1.0) -> None:
    """Probing runs until `at`, when the peer answers our last probe to PEER."""
    run(s, until=at)
    s.receive_probe(Probe(TXID, ack=True, observed=US), PEER, at)


@pytest.mark.parametrize(("proven", "expected"), [
    (True, [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]),  # every round once the IP is proven
    (False, [0.0, 0.05, 0.15]),  # ICE-like backoff before: 50 ms doubling (next: 0.35)
])
def test_candidates_are_probed_every_round_or_backed_off_while_unproven(
        proven: bool, expected: list[float]) -> None:
    out = run(session(proven=proven), until=0.31)
    assert probes(out, ProbeKind.PROBE) == expected


def test_unproven_backoff_stops_doubling_at_unproven_interval() -> None:
    out = run(session(proven=False), until=3.0)
    sent = probes(out, ProbeKind.PROBE)
    assert sent[:5] == [0.0, 0.05, 0.15, 0.35, 0.75]
    gaps = {round(b - a, 6) for a, b in pairwise(sent[4:])}
    assert gaps == {CONFIG.unproven_interval}


def test_probing_ends_at_probe_timeout_and_the_timer_with_it() -> None:
    s = session()
    out = run(s, until=60)
    assert max(probes(out, ProbeKind.PROBE)) < CONFIG.probe_timeout
    assert s.get_timer() is None
    assert s.retirement(CONFIG.probe_timeout + 0.1) is Retired.FRUITLESS


def test_an_answer_makes_the_pair_alive_and_keepalives_follow_every_interval() -> None:
    s = session()
    alive(s, at=1.0)
    pair = s.table.get(FIRST)
    assert pair.state is PairState.ALIVE and pair.local == US
    assert pair.rtt == pytest.approx(0.05, abs=1e-6)  # the last probe left at 0.95
    out = run(s, until=12)
    assert probes(out, ProbeKind.KEEPALIVE) == [1.0, 6.0, 11.0]
    assert not probes(out, ProbeKind.PROBE)  # alive: no probes any more, only keepalives
    assert probes(out, ProbeKind.PROBE, LAN)  # the other candidate is still probed


def test_a_silent_alive_pair_expires_after_pair_timeout() -> None:
    s = session()
    alive(s, at=1.0)
    s.receive_probe(Probe(TXID), PEER, 5.0)  # heard again: silence counts from here
    out = run(s, until=30)
    expired = [(t, a) for t, a in out if isinstance(a, Expired)]
    assert expired == [(5.0 + CONFIG.pair_timeout, Expired(s.table.get(FIRST), Expiry.SILENT))]
    assert s.table.get(FIRST).state is PairState.EXPIRED


@pytest.mark.parametrize(("probe", "src", "answered", "pairs"), [
    (Probe(TXID), PEER, True, 2),  # the peer's probe on a known pair is answered
    (Probe(TXID), Endpoint(ip_address("198.18.0.21"), 61234), True, 3),  # peer-reflexive
    (Probe(TXID, ack=True), PEER, False, 2),  # an answer is not answered
    (Probe(bytes(16)), PEER, False, 2),  # another traversal's probe is ignored
])
def test_the_peers_probes_are_answered_with_where_they_came_from(
        probe: Probe, src: Endpoint, answered: bool, pairs: int) -> None:
    s = session()
    drain(s)
    s.receive_probe(probe, src, 0.01)
    answers = [a for a in drain(s) if isinstance(a, SendProbe)]
    assert [a.kind for a in answers] == ([ProbeKind.ANSWER] if answered else [])
    if answered:
        sent = decode(unframe_datagram(answers[0].datagram) or b"", Probe)
        assert sent == Probe(TXID, ack=True, observed=src) and answers[0].dst == src
    assert len(s.table.pairs()) == pairs


def test_a_peer_reflexive_candidate_is_probed_even_once_the_others_are_alive() -> None:
    s = session(PEER, proven=True)
    alive(s, at=0.01)
    run(s, until=1)  # nothing is probing: no rounds
    other = Endpoint(ip_address("198.18.0.21"), 61234)
    s.budget.prove(other.ip)
    s.receive_probe(Probe(TXID), other, 1.5)
    assert probes(run(s, until=1.61), ProbeKind.PROBE, other) == [1.5, 1.55, 1.6]


@pytest.mark.parametrize(("dial", "actions"), [
    (True, [StopCarrier]),  # this node dials: the peer listens
    (False, [StopCarrier, Listen]),  # this node listens: the peer dials
])
def test_taking_a_pair_stops_probing_and_listens_unless_dialling(
        dial: bool, actions: list[type]) -> None:
    s = session()
    alive(s)
    drain(s)
    taken = s.take(FIRST, 2.0, dial=dial, use_within=10)
    assert taken.state is PairState.TAKEN and taken.deadline == 12.0 and s.dialer is dial
    assert [type(a) for a in drain(s)] == actions
    assert s.stopped
    out = run(s, until=11.9)
    assert not [a for _, a in out if isinstance(a, SendProbe)]  # no keepalives, no probes


def test_a_taken_pair_unused_by_its_deadline_expires_and_a_used_one_does_not() -> None:
    unused, used = session(), session()
    for s in (unused, used):
        alive(s)
        s.take(FIRST, 2.0, dial=True, use_within=10)
    used.connected(5.0)
    assert [a for _, a in run(unused, until=20) if isinstance(a, Expired)] == \
        [Expired(unused.table.get(FIRST), Expiry.UNUSED)]
    assert not [a for _, a in run(used, until=20) if isinstance(a, Expired)]
    assert used.table.get(FIRST).state is PairState.TAKEN


@pytest.mark.parametrize("pair_id", [FIRST, SECOND])
def test_one_pair_per_traversal_is_taken(pair_id: PairId) -> None:
    s = session()
    alive(s)
    s.take(FIRST, 2.0, dial=True, use_within=10)
    with pytest.raises(PairTaken):
        s.take(pair_id, 2.1, dial=True, use_within=10)


def test_a_pair_not_alive_cannot_be_taken_here() -> None:
    s = session()
    with pytest.raises(PairExpired):
        s.take(FIRST, 1.0, dial=True, use_within=10)
    assert not s.stopped and s.dialer is None


@pytest.mark.parametrize(("dial", "action"), [(False, Listen), (True, Dial)])
def test_the_peer_takes_a_pair_and_this_side_listens_or_dials(dial: bool,
                                                              action: type) -> None:
    s = session()
    alive(s)
    drain(s)
    taken = s.peer_take(Take(TXID, yours=US, mine=PEER, dial=dial), 2.0)
    assert not isinstance(taken, type(ALREADY_TAKEN))
    assert taken.ref == FIRST and taken.deadline == 2.0 + CONFIG.take_deadline
    assert [type(a) for a in drain(s)] == [StopCarrier, action]
    assert s.dialer is dial


@pytest.mark.parametrize(("heard", "mine", "expected"), [
    ((PEER,), PEER, FIRST),  # heard only (our probe not answered yet): the taker proved it
    ((), PEER, None),  # never heard: nothing proves the peer's direction
    ((PEER,), Endpoint(ip_address("203.0.113.7"), 1), None),  # no match, none alive
    ((), None, None),
])
def test_the_pair_the_peer_took_must_be_one_heard_here(
        heard: tuple[Endpoint, ...], mine: Endpoint | None, expected: PairId | None) -> None:
    s = session()
    for src in heard:
        s.receive_probe(Probe(TXID), src, 0.5)
    taken = s.peer_take(Take(TXID, yours=US, mine=mine), 1.0)
    if expected is None:
        assert taken == NO_MATCHING_PAIR and not s.stopped
    else:
        assert not isinstance(taken, type(NO_MATCHING_PAIR)) and taken.ref == expected


def test_with_no_match_the_only_alive_pair_is_the_one_taken() -> None:
    s = session()
    alive(s)
    taken = s.peer_take(Take(TXID, yours=US, mine=None), 2.0)
    assert not isinstance(taken, type(NO_MATCHING_PAIR)) and taken.ref == FIRST


def test_when_both_sides_take_at_once_the_second_take_is_refused_on_each_side() -> None:
    ours = session()
    alive(ours)
    ours.take(FIRST, 2.0, dial=True, use_within=10)  # ours first, then the peer's Take
    assert ours.peer_take(Take(TXID, yours=US, mine=PEER), 2.0) == ALREADY_TAKEN
    theirs = session()
    alive(theirs)
    theirs.peer_take(Take(TXID, yours=US, mine=PEER), 2.0)  # the peer's first, then ours
    with pytest.raises(PairTaken):
        theirs.take(FIRST, 2.0, dial=True, use_within=10)


def test_a_take_the_peer_refused_expires_the_pair_and_no_other_can_be_taken() -> None:
    s = session()
    alive(s)
    s.take(FIRST, 2.0, dial=False, use_within=10)
    drain(s)
    s.take_refused(2.5)
    assert drain(s) == [Expired(s.table.get(FIRST), Expiry.REFUSED)]
    with pytest.raises(PairTaken):
        s.take(FIRST, 3.0, dial=True, use_within=10)


def _used_up(s: TraversalSession) -> None:
    alive(s)
    s.take(FIRST, 2.0, dial=True, use_within=1)
    run(s, until=5)


def _connected(s: TraversalSession) -> None:
    alive(s)
    s.take(FIRST, 2.0, dial=True, use_within=1)
    s.connected(2.5)


def _disconnected(s: TraversalSession) -> None:
    _connected(s)
    s.disconnected(30)


def _alive(s: TraversalSession) -> None:
    alive(s)


def _nothing(s: TraversalSession) -> None:
    pass


@pytest.mark.parametrize(("history", "now", "retired"), [
    (_nothing, 5, None),  # still probing
    (_nothing, CONFIG.probe_timeout + 1, Retired.FRUITLESS),
    (_alive, CONFIG.probe_timeout + 1, None),  # an alive pair may still be taken
    (_alive, CONFIG.max_untaken + 1, Retired.IDLE),
    (_used_up, 5, Retired.USED),  # taken, never used: its deadline passed
    (_connected, CONFIG.max_untaken + 1, None),  # its connection runs
    (_disconnected, 31, Retired.USED),
])
def test_a_traversal_retires_when_it_can_give_nothing_more(
        history: object, now: float, retired: Retired | None) -> None:
    s = session()
    assert callable(history)
    history(s)
    assert s.retirement(now) is retired


def test_a_closed_traversal_stops_and_hears_nothing_more() -> None:
    s = session()
    drain(s)
    s.close(1.0)
    assert drain(s) == [StopCarrier()]
    s.receive_probe(Probe(TXID, ack=True), PEER, 1.1)
    assert not drain(s) and s.table.get(FIRST).state is PairState.PROBING
    assert s.get_timer() is None


def test_the_table_is_bounded_and_withheld_probes_are_counted() -> None:
    counters = ProbeCounters()
    s = session(proven=False, paid=30, counters=counters)  # 90 bytes per network: 1 probe
    for port in range(1, 20):
        s.receive_probe(Probe(TXID), Endpoint(ip_address("198.18.0.1"), port), 0)
    assert len(s.table.pairs()) == 8
    run(s, until=1)
    assert counters.withheld > 0 and counters == s.stats
    assert counters.unproven_bytes <= 2 * 90  # PEER's network and LAN's


def test_probes_and_keepalives_are_counted_per_session_and_in_the_shared_totals() -> None:
    counters = ProbeCounters()
    s = session(PEER, counters=counters)
    run(s, until=0.1)
    alive(s, at=0.12)
    run(s, until=0.2)
    assert (s.stats.probes_sent, s.stats.keepalives_sent) == (3, 1)
    assert counters == s.stats


def test_every_timer_is_reached_in_bounded_steps_for_short_intervals() -> None:
    fast = replace(CONFIG, probe_interval=0.001, probe_timeout=1.0, unproven_interval=0.002)
    s = session(config=fast)
    out = run(s, until=2)
    assert len(probes(out, ProbeKind.PROBE)) == 1000
