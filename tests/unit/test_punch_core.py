"""Punch cores without sockets: the birthday sessions, bounded by construction."""

from __future__ import annotations

import random
from ipaddress import ip_address

from meshnat.endpoint import Endpoint
from meshnat.punch.birthday import (
    ANSWER_COPIES,
    EasySideSession,
    HardSideSession,
    HeardOn,
    SendFrom,
)
from meshnat.punch.core import GaveUp, Heard
from meshnat.punch.messages import Probe

TXID = bytes(range(16))
A, B = Endpoint.parse("198.18.0.20:4001"), Endpoint.parse("10.1.0.10:4001")


def drain(session: EasySideSession | HardSideSession) -> list[object]:
    actions = []
    while (action := session.next_action()) is not None:
        actions.append(action)
    return actions


def test_easy_side_sends_each_port_once_within_its_budget_and_rate() -> None:
    ip = ip_address("198.18.0.30")
    s = EasySideSession(TXID, ip, rng=random.Random(7), max_probes=100, probes_per_tick=30,
                        tick=0.01, timeout=3.0, port_range=(1024, 1124))
    s.start(now=0.0)
    first = drain(s)
    assert len(first) == 30
    for tick in range(1, 10):
        s.handle_timer(now=tick * 0.01)
    ports = [a.dst.port for a in first + drain(s)]
    assert len(ports) == 100 == len(set(ports)) and all(1024 <= p <= 1124 for p in ports)
    assert s.get_timer() == 3.0  # budget spent: it only waits for a late answer now
    s.receive_probe(Probe(TXID), Endpoint(ip_address("203.0.113.1"), 5), now=0.2)  # other IP
    assert drain(s) == []
    s.receive_probe(Probe(TXID), Endpoint(ip, 1050), now=0.2)
    assert isinstance(drain(s)[-1], Heard)


def test_hard_side_opens_one_mapping_per_socket_and_answers_on_the_socket_that_heard() -> None:
    s = HardSideSession(TXID, [A], sockets=256, refresh_interval=1.0, timeout=3.0)
    s.start(now=0.0)
    sends = drain(s)
    assert {a.socket for a in sends if isinstance(a, SendFrom)} == set(range(256))
    assert {a.dst for a in sends if isinstance(a, SendFrom)} == {A}
    s.receive_probe(17, Probe(TXID), A, now=0.3)
    *answers, heard = drain(s)
    assert answers == [SendFrom(17, A, Probe(TXID, ack=True))] * ANSWER_COPIES  # one may be lost
    assert isinstance(heard, HeardOn) and heard.socket == 17
    assert heard.probes_sent == 256 + ANSWER_COPIES


def test_hard_side_gives_up_at_its_deadline() -> None:
    s = HardSideSession(TXID, [A], sockets=4, refresh_interval=1.0, timeout=1.5)
    s.start(now=0.0)
    s.handle_timer(now=1.0)
    s.handle_timer(now=1.5)
    assert isinstance(drain(s)[-1], GaveUp)
