"""`PathKeeper`: holds each peer's punched connection open, and punches again when it dies.

A punched path lives only as long as the NAT mappings on it, so the keeper pings over it every
`interval` (25 s by default, under Linux conntrack's 30 s for a one-exchange UDP flow;
Tailscale uses 27 s). A failed ping means the path is lost (`PathLost`); while re-punches are
left, `repunch` is asked for a new one, which only works while another connection (the relay)
still reaches the peer. One kept path per peer: a newer punch replaces the older one, whose
loop then ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, IHost, TaskStatus
from meshnat.errors import MeshNatError
from meshnat.events import EventSink, PathLost
from meshnat.punch.results import PathStatistics, Punched

log = logging.getLogger(__name__)

Repunch = Callable[[ID, int], Awaitable[Punched]]
"""Punch `peer` again, keeping the result with the given re-punches left."""


class PathKeeper:
    """The punched connections a `HolePuncher` keeps alive, and their counters."""

    def __init__(self, *, interval: float, ping_timeout: float, repunch: Repunch,
                 events: EventSink) -> None:
        self._interval, self._ping_timeout = interval, ping_timeout
        self._repunch, self._events = repunch, events
        self._kept: dict[ID, Punched] = {}
        self._host: IHost | None = None
        self._nursery: trio.Nursery | None = None
        self._keepalives_sent = self._paths_lost = self._repunches = 0

    def statistics(self) -> PathStatistics:
        return PathStatistics(kept=len(self._kept), keepalives_sent=self._keepalives_sent,
                              paths_lost=self._paths_lost, repunches=self._repunches)

    def punched(self, peer: ID) -> Punched | None:
        """The punched connection to `peer` being kept alive now, if any."""
        return self._kept.get(peer)

    async def run(self, host: IHost, *, task_status: TaskStatus[None]) -> None:
        """Keep paths over `host` until cancelled; `keep` does nothing outside this."""
        try:
            async with trio.open_nursery() as nursery:
                self._host, self._nursery = host, nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._host = self._nursery = None

    def keep(self, result: Punched, *, repunches_left: int) -> None:
        """Keep `result` alive from now on, replacing the peer's older path, if any."""
        kept = self._kept.get(result.peer)
        if kept is not None and kept.connection is result.connection:
            return  # a punch that found the same connection: its keepalive already runs
        self._kept[result.peer] = result
        if self._nursery is not None:
            self._nursery.start_soon(self._keepalive, result, repunches_left)

    async def _keepalive(self, result: Punched, repunches_left: int) -> None:
        while True:
            await trio.sleep(self._interval)  # the keepalive period itself
            if self._kept.get(result.peer) is not result or self._host is None:
                return  # a newer direct path to the peer has its own keepalive
            try:
                await _libp2p.ping_over(self._host, result.connection,
                                        timeout=self._ping_timeout)
            except MeshNatError as exc:
                self._lose(result, exc)
                break
            self._keepalives_sent += 1
        if repunches_left <= 0:
            return
        self._repunches += 1
        try:
            again = await self._repunch(result.peer, repunches_left - 1)
        except MeshNatError as exc:
            log.info("punch: re-punch to %s failed: %s", result.peer, exc)
            return
        log.info("punch: re-punched %s over %s", again.peer, again.transport)

    def _lose(self, result: Punched, exc: MeshNatError) -> None:
        self._paths_lost += 1
        if self._kept.get(result.peer) is result:
            del self._kept[result.peer]
        self._events(PathLost(str(result.peer), str(exc)))
        log.info("punch: direct path to %s lost: %s", result.peer, exc)
