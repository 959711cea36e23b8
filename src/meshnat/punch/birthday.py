"""Pure birthday-probing sessions, for when exactly one side's NAT maps per destination.

The hard side (endpoint-dependent mapping) opens many sockets and sends one probe from each to
the easy side's single public endpoint: each creates a mapping, on a random public port, that
accepts packets from exactly that endpoint. The easy side (endpoint-independent mapping) sends
probes to random ports of the hard side's public IP. The first probe that lands on one of those
mappings is the path (Tailscale's numbers: 256 hard-side sockets, 1024 probes ~ 98%, 2048 ~
99.9%). Both sessions are bounded in packets and time. Two hard sides are not attempted: that
would need ~170,000 probes per side.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from meshnat.endpoint import Endpoint
from meshnat.errors import LocalProtocolError
from meshnat.punch.core import DeadlineSession, GaveUp, Heard, SendProbe
from meshnat.punch.messages import Probe

ANSWER_COPIES = 2
"""Answers (`ack` probes) sent to the probe a session hears: it finishes on hearing, so one
lost answer would leave the peer (the hard side, which only hears answers) with nothing; the
classification helper sends its probes twice for the same reason."""


@dataclass(frozen=True, slots=True)
class SendFrom:
    """Send `probe` to `dst` from the hard side's socket number `socket`."""

    socket: int
    dst: Endpoint
    probe: Probe


@dataclass(frozen=True, slots=True)
class HeardOn:
    """The easy side's probe arrived on socket number `socket`, from `remote`."""

    socket: int
    remote: Endpoint
    elapsed: float
    probes_sent: int


class EasySideSession(DeadlineSession[SendProbe | Heard]):
    """Probes random ports of the hard side's IP from the node's UDP socket (`punch_udp`):
    `SendProbe` actions, then `Heard` or `GaveUp`."""

    def __init__(self, txid: bytes, ip: IPv4Address | IPv6Address, *, rng: random.Random,
                 max_probes: int, probes_per_tick: int, tick: float, timeout: float,
                 port_range: tuple[int, int] = (1024, 65535)) -> None:
        if max_probes < 1 or probes_per_tick < 1:
            raise LocalProtocolError("birthday probing needs a positive probe budget")
        super().__init__(interval=tick, timeout=timeout)
        self._txid, self._ip, self._rng = txid, ip, rng
        self._max, self._per_tick, self._ports = max_probes, probes_per_tick, port_range
        self._tried: set[int] = set()

    @property
    def probes_sent(self) -> int:
        return len(self._tried)

    @property
    def txid(self) -> bytes:
        return self._txid

    def receive_probe(self, probe: Probe, src: Endpoint, now: float) -> None:
        if self._done or src.ip != self._ip or not hmac.compare_digest(probe.txid, self._txid):
            return
        self._actions.extend([SendProbe(src, Probe(self._txid, ack=True))] * ANSWER_COPIES)
        self._finish(Heard(src, now - self._started_at, self.probes_sent + ANSWER_COPIES))

    def get_timer(self) -> float | None:
        if not self._done and len(self._tried) >= self._max:
            return self._deadline  # budget spent: only wait for a late answer
        return super().get_timer()

    def _give_up(self) -> GaveUp:
        return GaveUp(f"birthday probing: no port of {self._ip} answered "
                      f"{self.probes_sent} probes", self.probes_sent)

    def _tick(self, now: float) -> None:
        low, high = self._ports
        budget = min(self._per_tick, self._max - len(self._tried),
                     high - low + 1 - len(self._tried))
        for _ in range(budget):
            port = self._rng.randint(low, high)
            while port in self._tried:  # each port once: bounded since budget <= free ports
                port = self._rng.randint(low, high)
            self._tried.add(port)
            self._actions.append(SendProbe(Endpoint(self._ip, port), Probe(self._txid)))


class HardSideSession(DeadlineSession[SendFrom | HeardOn]):
    """Sends one probe from each of `sockets` sockets to the easy side's endpoints."""

    def __init__(self, txid: bytes, targets: Sequence[Endpoint], *, sockets: int,
                 refresh_interval: float, timeout: float) -> None:
        if not targets or sockets < 1:
            raise LocalProtocolError("birthday probing needs targets and sockets")
        super().__init__(interval=refresh_interval, timeout=timeout)
        self._txid, self._targets, self._sockets = txid, tuple(targets), sockets
        self._probes_sent = 0

    @property
    def probes_sent(self) -> int:
        return self._probes_sent

    @property
    def txid(self) -> bytes:
        return self._txid

    def receive_probe(self, socket: int, probe: Probe, src: Endpoint, now: float) -> None:
        if self._done or not hmac.compare_digest(probe.txid, self._txid):
            return
        self._actions.extend([SendFrom(socket, src, Probe(self._txid, ack=True))]
                             * ANSWER_COPIES)
        self._probes_sent += ANSWER_COPIES
        self._finish(HeardOn(socket, src, now - self._started_at, self._probes_sent))

    def _give_up(self) -> GaveUp:
        return GaveUp(f"birthday probing: no probe reached any of {self._sockets} sockets",
                      self._probes_sent)

    def _tick(self, now: float) -> None:
        for socket in range(self._sockets):
            for dst in self._targets:
                self._actions.append(SendFrom(socket, dst, Probe(self._txid)))
                self._probes_sent += 1
