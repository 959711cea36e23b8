"""`PathKeeper`: holds each peer's punched connection open, and retires it once it is dead.

A punched path lives only as long as the NAT mappings on it (a router that reboots or
flushes its table forgets them at once). The keeper pings over it as `PathHealth`
(`punch/health.py`) says: every few seconds while healthy, faster once a ping failed or the
application saw the path fail (`suspect`). A dead path (pings failed in a row, or the
connection closed) is retired: no longer labelled punched, closed (the streams on it end with
an error) and reported as `PathLost`. Punching again is the Connector's job: it owns the
relayed rung that a new punch needs. One kept path per peer: a newer punch replaces it, and
the older one is checked once more: closed if dead, else left open unkept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from weakref import WeakSet

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, IHost, INetConn, TaskStatus
from meshnat.errors import MeshNatError
from meshnat.events import EventSink, PathLost
from meshnat.punch.health import Health, HealthConfig, PathDead, PathHealth, SendPing
from meshnat.punch.results import PathStatistics, Punched

log = logging.getLogger(__name__)


class HealthWatch:
    """Pings one connection as `PathHealth` says until it is dead (or closes)."""

    def __init__(self, host: IHost, conn: INetConn, config: HealthConfig) -> None:
        self.host, self.conn = host, conn
        self.health = PathHealth(config, trio.current_time())
        self.pings_answered = 0
        self._wake = trio.Event()
        self._outcome = trio.Event()

    def suspect(self) -> None:
        """Something above saw the connection fail: ping it now."""
        self.health.suspect(trio.current_time())
        self._wake.set()

    @property
    def doubtful(self) -> bool:
        """True from a suspected failure (a failed ping, or `suspect`) until a ping is
        answered again; also once dead, until the connection is closed."""
        return self.health.state is not Health.HEALTHY

    async def next_outcome(self) -> None:
        """Wait for the next ping's outcome (or the connection's close, or the watch's end)."""
        await self._outcome.wait()

    def note_outcome(self) -> None:
        self._outcome.set()
        self._outcome = trio.Event()

    async def run(self, stop: Callable[[], bool] = lambda: False) -> PathDead | None:
        """Why the connection is dead; None once `stop()` holds after an answered ping.
        Pings run concurrently, as many as `PathHealth` asks for."""
        stopped = False

        async def on_close() -> None:
            await _libp2p.wait_closed(self.conn)
            self.health.closed()
            self._wake.set()
            self.note_outcome()

        async def ping(action: SendPing) -> None:
            nonlocal stopped
            try:
                await _libp2p.ping_over(self.host, self.conn, timeout=action.timeout)
            except MeshNatError as exc:
                log.debug("keepalive over %s failed: %s", self.conn.muxed_conn.peer_id, exc)
                self.health.failed(trio.current_time(), str(exc), action.ping)
            else:
                self.pings_answered += 1
                self.health.answered(trio.current_time(), action.ping)
                stopped = stopped or stop()
            self._wake.set()
            self.note_outcome()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_close)
            try:
                while True:
                    while (action := self.health.next_action()) is not None:
                        if isinstance(action, PathDead):
                            return action
                        nursery.start_soon(ping, action)
                    if stopped:
                        return None
                    timer = self.health.get_timer()
                    with trio.move_on_at(timer if timer is not None else float("inf")):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    self.health.handle_timer(trio.current_time())
            finally:
                nursery.cancel_scope.cancel()


async def close_dead(conn: INetConn, timeout: float) -> None:
    """Close `conn`, shielded, within `timeout` seconds: a dead path may not take the close."""
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + timeout
        await conn.close()


@dataclass(slots=True)
class _Kept:
    result: Punched
    watch: HealthWatch
    replaced: bool = False
    """A newer punch to the peer replaced this path: check it once more, then let it go."""


class PathKeeper:
    """The punched connections a `HolePuncher` keeps alive, and their counters."""

    def __init__(self, config: HealthConfig, *, events: EventSink) -> None:
        self._config, self._events = config, events
        self._kept: dict[ID, _Kept] = {}
        self._host: IHost | None = None
        self._nursery: trio.Nursery | None = None
        self._keepalives_sent = self._paths_lost = 0
        self._died_silently: WeakSet[INetConn] = WeakSet()

    def statistics(self) -> PathStatistics:
        answered = self._keepalives_sent + sum(k.watch.pings_answered  # running ones too
                                               for k in self._kept.values())
        return PathStatistics(kept=len(self._kept), keepalives_sent=answered,
                              paths_lost=self._paths_lost)

    def punched(self, peer: ID) -> Punched | None:
        """The punched connection to `peer` being kept alive now, if any."""
        kept = self._kept.get(peer)
        return kept.result if kept is not None else None

    async def run(self, host: IHost, *, task_status: TaskStatus[None]) -> None:
        """Keep paths over `host` until cancelled; `keep` does nothing outside this."""
        try:
            async with trio.open_nursery() as nursery:
                self._host, self._nursery = host, nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._host = self._nursery = None
            self._kept.clear()

    def keep(self, result: Punched) -> None:
        """Keep `result` alive from now on, replacing the peer's older path, if any."""
        kept = self._kept.get(result.peer)
        if kept is not None and kept.result.connection is result.connection:
            return  # a punch that found the same connection: it is kept already
        if self._nursery is None:
            return
        entry = _Kept(result, HealthWatch(self._nursery_host(), result.connection,
                                          self._config))
        self._kept[result.peer] = entry
        if kept is not None:  # the older one: closed if dead (it must not stay best), else let go
            kept.replaced = True
            kept.watch.suspect()
        self._nursery.start_soon(self._keep, entry)

    def died_silently(self, conn: INetConn) -> bool:
        """True if `conn` was retired because pings found it dead (not closed by an end)."""
        return conn in self._died_silently

    def suspect(self, peer: ID) -> None:
        """The application saw `peer`'s punched path fail: check it now."""
        kept = self._kept.get(peer)
        if kept is not None:
            kept.watch.suspect()

    def doubtful(self, conn: INetConn) -> bool:
        """True while `conn`, a kept punched path, has not been confirmed by a ping since a
        suspected failure (`HealthWatch.doubtful`)."""
        kept = self._kept.get(conn.muxed_conn.peer_id)
        return kept is not None and kept.result.connection is conn and kept.watch.doubtful

    async def wait_settled(self, conn: INetConn) -> bool:
        """Wait until the health check has made up its mind about `conn`: True once a ping
        over it is answered (healthy), False once it is retired or no longer kept. Bounded
        by the health check itself (`dead_after` pings of at most `ping_timeout` each)."""
        while True:
            kept = self._kept.get(conn.muxed_conn.peer_id)
            if kept is None or kept.result.connection is not conn or kept.replaced \
                    or kept.watch.health.state is Health.DEAD:
                return False
            if not kept.watch.doubtful:
                return True
            await kept.watch.next_outcome()

    def _nursery_host(self) -> IHost:
        assert self._host is not None  # set together with the nursery
        return self._host

    async def _keep(self, kept: _Kept) -> None:
        try:
            dead = await kept.watch.run(stop=lambda: kept.replaced)
        finally:
            self._keepalives_sent += kept.watch.pings_answered
        try:
            if dead is not None:
                if dead.silent:
                    self._died_silently.add(kept.result.connection)
                await self._retire(kept, dead.reason)
        finally:
            kept.watch.note_outcome()  # wait_settled: the watch is over

    async def _retire(self, kept: _Kept, reason: str) -> None:
        result = kept.result
        if not kept.replaced:
            self._paths_lost += 1
            del self._kept[result.peer]
            self._events(PathLost(str(result.peer), reason))
            log.info("punch: direct path to %s lost: %s", result.peer, reason)
        await close_dead(result.connection, self._config.ping_timeout)
