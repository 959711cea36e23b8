"""2,000 seeded random scenarios: any NAT pair, any delay, jitter, loss, reordering,
duplication, start skew and binding timeout, with an off-path spoofer spraying both sides
with wrong-txid probes and garbage. Whatever happens, no session may hear from an endpoint
that is not its peer's, finish late, twice or never, act after finishing, or send more than
its bound; and two endpoint-independent sides on a lossless path always punch."""

from __future__ import annotations

import random
from ipaddress import ip_address

import pytest

from meshnat.endpoint import Endpoint
from meshnat.punch.config import PunchConfig
from meshnat.punch.core import GaveUp
from meshnat.punch.messages import Probe
from tests.pair.harness import Finished, Outgoing
from tests.pair.kinds import ORDERED
from tests.pair.punch_cores import (
    Scenario,
    broken_invariants,
    expected,
    heard_from,
    punch_scenario,
    wire,
)
from tests.support.natsim import PathModel

RUNS = 2000
CHUNKS = 8
SPOOFER = Endpoint(ip_address("198.18.0.66"), 6666)


class Spoofer:
    """An off-path host that cannot see the punch (so not its txid): every `interval` it sends
    each side's public endpoint and a random port of its IP a wrong-txid probe and garbage."""

    def __init__(self, targets: list[Endpoint], rng: random.Random, interval: float) -> None:
        self.sockets = frozenset({SPOOFER})
        self._targets, self._rng, self._interval = targets, rng, interval
        self._next: float | None = None
        self._out: list[Outgoing | Finished] = []

    def start(self, now: float) -> None:
        self._next = now
        self.handle_timer(now)

    def feed(self, local: Endpoint, src: Endpoint, payload: bytes, now: float) -> None:
        pass

    def handle_timer(self, now: float) -> None:
        assert self._next is not None
        self._next = now + self._interval
        forged = wire(Probe(self._rng.randbytes(16), ack=self._rng.random() < 0.5))
        for target in self._targets:
            for dst in (target, Endpoint(target.ip, self._rng.randint(1024, 65535))):
                for payload in (forged, self._rng.randbytes(20)):
                    self._out.append(Outgoing(SPOOFER, dst, payload))

    def get_timer(self) -> float | None:
        return self._next

    def drain(self) -> list[Outgoing | Finished]:
        out, self._out = self._out, []
        return out


def scenario(i: int) -> tuple[Scenario, PathModel]:
    rng = random.Random(i)
    pair = rng.choice(ORDERED)
    path = PathModel(delay=rng.uniform(0.001, 0.15), jitter=rng.uniform(0, 0.05),
                     loss=rng.choice((0.0, rng.uniform(0, 0.6))), reorder=rng.uniform(0, 0.3),
                     reorder_delay=rng.uniform(0.001, 0.1), duplicate=rng.uniform(0, 0.1))
    # budgets below the defaults (test_punch_pairs runs those): the runs stay cheap and the
    # easy side often spends its whole budget before its deadline
    config = PunchConfig(birthday_sockets=rng.choice((4, 16, 64)),
                         birthday_max_probes=rng.choice((32, 128, 512)))
    s = punch_scenario(*pair, seed=i, path=path, config=config, skew=rng.uniform(-0.1, 0.1),
                       binding_timeout=rng.choice((0.5, 2.0, 30.0, 120.0)))
    s.net.add_host(SPOOFER.ip)
    return s, path


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_scenarios_keep_every_invariant(chunk: int) -> None:
    for i in range(chunk, RUNS, CHUNKS):
        s, path = scenario(i)
        targets = [side.offer.udp[0] for side in s.sides if side.offer.udp]
        spoofer = Spoofer(targets, random.Random(-i), interval=0.25)
        result = s.run(extra=[spoofer], extra_start=min(side.start for side in s.sides))
        assert broken_invariants(s, result) == [], (i, s.sides[0].kind, s.sides[1].kind, path)
        outcomes = [None if (t := s.trace(result, n)) is None else t.outcome for n in (0, 1)]
        kinds = (s.sides[0].kind, s.sides[1].kind)
        if expected(*kinds) in ("relay", "no-udp"):
            assert all(heard_from(o) is None for o in outcomes), i
        elif expected(*kinds) == "punched" and path.loss == 0.0:
            assert not any(isinstance(o, GaveUp) for o in outcomes), (i, kinds, path)
