"""One traversal's probe loop: probes to candidates (paced and bounded while their IP is not
proven), answers to the peer's probes, keepalives on alive pairs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from meshnat.endpoint import Endpoint
from meshnat.errors import MeshNatError
from meshnat.traversal.budget import udp_wire_bytes
from meshnat.traversal.messages import Probe
from meshnat.traversal.pairs import PairState
from meshnat.traversal.session import Traversal, TraversalConfig
from meshnat.wire import encode, frame_datagram

log = logging.getLogger(__name__)


@dataclass
class ProbeCounters:
    """A service's totals over all its traversals."""

    unproven_bytes: int = 0
    """Bytes (UDP/IP headers included) sent to candidate IPs not proven at the time."""
    withheld: int = 0
    """Probes not sent because an unproven IP's allowance was spent."""


class UnprovenPacer:
    """When the next probe to a candidate may go (pure): every tick once its IP is proven;
    before that ICE-like backoff, the first at once, then `first_gap` (ICE's Ta) doubling up
    to `max_gap` (ICE's RTO floor)."""

    def __init__(self, *, first_gap: float, max_gap: float) -> None:
        self._first, self._max = first_gap, max(first_gap, max_gap)
        self._next: dict[Endpoint, tuple[float, float]] = {}

    def due(self, remote: Endpoint, proven: bool, now: float) -> bool:
        if proven:
            return True
        at, gap = self._next.get(remote, (now, self._first))
        if now + 1e-9 < at:
            return False
        self._next[remote] = (now + gap, min(gap * 2, self._max))
        return True


async def run_probing(traversal: Traversal, cfg: TraversalConfig, counters: ProbeCounters,
                      expire: Callable[[Traversal], None]) -> None:
    """Probe candidates, answer the peer's probes, keep alive pairs alive; until stopped."""
    carrier = traversal.carrier
    if carrier is None:
        return
    budget = traversal.budget
    last_keepalive: dict[Endpoint, float] = {}
    pacer = UnprovenPacer(first_gap=cfg.probe_interval, max_gap=cfg.unproven_interval)

    async def send(probe: Probe, dst: Endpoint) -> bool:
        data = frame_datagram(encode(probe))
        unproven = not budget.is_proven(dst.ip)
        if not budget.spend(dst.ip, udp_wire_bytes(len(data), dst.ip)):
            counters.withheld += 1
            return False
        if unproven:
            counters.unproven_bytes += udp_wire_bytes(len(data), dst.ip)
        try:
            await carrier.send(data, dst)
        except (OSError, MeshNatError) as exc:
            log.debug("traversal %s: probe to %s failed: %s", traversal.id, dst, exc)
        return True

    async def on_probe(probe: Probe, src: Endpoint) -> None:
        if probe.txid != traversal.txid:
            return
        if budget.prove(src.ip):  # the txid came from there: volume may go there now
            log.debug("traversal %s: %s proven", traversal.id, src.ip)
        known = traversal.table.heard(src, trio.current_time(), ack=probe.ack,
                                      observed=probe.observed)
        log.debug("traversal %s: %s from %s", traversal.id,
                  "answer" if probe.ack else "probe", src)
        traversal.notify()
        if known and not probe.ack:  # answer only endpoints the table holds
            await send(Probe(traversal.txid, ack=True, observed=src), src)

    with traversal.probing:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(carrier.run, on_probe)
            while True:
                now = trio.current_time()
                probing = now - traversal.started < cfg.probe_timeout
                for pair in traversal.table.pairs():
                    if pair.state is PairState.PROBING and probing:
                        if not pacer.due(pair.remote, budget.is_proven(pair.remote.ip), now):
                            continue
                        keepalive = False
                    elif pair.state is PairState.ALIVE and \
                            now - last_keepalive.get(pair.remote, 0.0) >= \
                            cfg.keepalive_interval:
                        last_keepalive[pair.remote] = now
                        keepalive = True
                    else:
                        continue
                    if await send(Probe(traversal.txid), pair.remote):
                        traversal.table.sent(pair.remote, now)
                        if keepalive:
                            traversal.keepalives_sent += 1
                        else:
                            traversal.probes_sent += 1
                expire(traversal)
                await trio.sleep(cfg.probe_interval)  # the probe clock itself
