"""`Connector`: one call to reach a peer, on the best path available now, upgraded in place.

The ladder: an existing connection (a direct one first), then the peer's router port
mappings (`mapped`, from its signed record), then its direct addresses, then a relay circuit;
with a HolePuncher, a relayed path is punched in the background. Once a direct connection
opens (and answered a ping), new paths use it; the relayed connection is closed as soon as the
streams still open on it have finished (at most `relay_drain_timeout` later). A failed punch
never touches the relayed path. When a punched path dies (the puncher retires it), the peer is
reached through a relay circuit again at once and punched again, as `punch/repunch.py`'s
schedule says (backoff, bounded attempts per peer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, Connection, INetConn, PeerInfo, TaskStatus
from meshnat.connect_config import ConnectConfig
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError, MeshNatError, NotMounted, PeerUnavailable
from meshnat.events import EventSink, PathEstablished, PathUpgraded, ignore_events
from meshnat.node import MeshNode
from meshnat.paths import PathKind
from meshnat.punch import HolePuncher, Punched
from meshnat.punch.repunch import RepunchSchedule
from meshnat.ratelimit import RateLimiter
from meshnat.relay import RelayClient

log = logging.getLogger(__name__)

__all__ = ["ConnectConfig", "Connector", "Path"]


@dataclass(frozen=True, slots=True)
class Path:
    """How this node reaches a peer right now."""

    peer: ID
    kind: PathKind
    transport: str
    remote: Endpoint | None
    """The peer's address on a direct path; None through a relay."""
    time_to_path: float
    """Seconds from connect() to this path."""
    connection: INetConn
    rtt: float | None = None
    """A libp2p ping's round trip over this path, seconds (None if the peer did not answer)."""
    time_to_direct: float | None = None
    """Seconds to the direct connection: dialled, or the punch that made it (None: relayed)."""
    attempts: tuple[str, ...] = ()
    """The rungs of the ladder tried, in order, with what became of each."""

    def to_json(self) -> dict[str, object]:
        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1e3, 3)

        return {"peer": str(self.peer), "path": self.kind, "transport": self.transport,
                "remote": str(self.remote) if self.remote else None,
                "time_to_path_ms": ms(self.time_to_path), "path_rtt_ms": ms(self.rtt),
                "time_to_direct_ms": ms(self.time_to_direct), "attempts": list(self.attempts)}


class Connector:
    """Reaches peers: direct if possible, relayed otherwise, punched to direct when it can."""

    def __init__(self, *, relays: Sequence[PeerInfo] = (), relay_client: RelayClient | None = None,
                 puncher: HolePuncher | None = None, config: ConnectConfig | None = None,
                 events: EventSink = ignore_events) -> None:
        if relays and relay_client is None:
            raise ConfigError("relays need a RelayClient to dial them")
        self.config = config or ConnectConfig()
        self._relays, self._relay_client, self._puncher = list(relays), relay_client, puncher
        self._events = events
        self._node: MeshNode | None = None
        self._nursery: trio.Nursery | None = None
        self._upgraded: dict[ID, trio.Event] = {}
        self._supervised: set[ID] = set()
        """Peers whose relayed path an `_upgrade` task punches (one task per peer)."""
        self._reaching: set[ID] = set()
        """Peers being reached again through a relay after `suspect` found no connection."""
        self._punched: dict[ID, Punched] = {}
        self._beside = RateLimiter(rate=1 / self.config.suspect_circuit_interval, burst=1,
                                   max_keys=self.config.max_paced_peers)
        """When `suspect` last dialled a circuit beside a peer's doubtful punched path."""

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._node, self._nursery = node, nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._node = self._nursery = None

    def _mounted(self) -> tuple[MeshNode, trio.Nursery]:
        if self._node is None or self._nursery is None:
            raise NotMounted("mount Connector on a running MeshNode first")
        return self._node, self._nursery

    async def connect(self, peer: PeerInfo, *, mapped: Sequence[multiaddr.Multiaddr] = ()) -> Path:
        """The best path to `peer` available now (existing, mapped, direct, relayed).

        `mapped` are the peer's router port mappings (`AddressRecord.mapped_addrs()`): a
        connection to one of them is a PathKind.MAPPED path.

        A relayed path is punched in the background; `wait_direct()` waits for that.
        Raises PeerUnavailable when no rung of the ladder reaches the peer.
        """
        node, _ = self._mounted()
        started = trio.current_time()
        attempts: list[str] = []
        # a direct connection if there is one: the relayed one may be draining
        for existing in node.connections(peer.peer_id):
            path = await self._found(existing, started, attempts=["existing connection"])
            if path is not None:
                return path
            attempts.append("existing connection: closed")
        direct = [a for a in peer.addrs if not _libp2p.is_circuit_addr(a) and a not in mapped]
        for kind, addrs in ((PathKind.MAPPED, list(mapped)), (PathKind.DIRECT, direct)):
            found = await self._dial_rung(peer.peer_id, addrs, kind, attempts)
            if found is not None:
                path = await self._found(found, started, attempts=[*attempts, str(kind)],
                                         kind=kind if kind is PathKind.MAPPED else None)
                if path is not None:
                    return path
                attempts.append(f"{kind}: the connection closed at once")
        return await self._via_relays(peer.peer_id, self._relays, started, attempts,
                                      "no direct address, no relay")

    async def _dial_rung(self, peer: ID, addrs: list[multiaddr.Multiaddr], kind: PathKind,
                         attempts: list[str]) -> Connection | None:
        """Dial `addrs` (the mapped or the direct rung); the connection, or None with what
        went wrong added to `attempts`."""
        if not addrs:
            return None
        node, _ = self._mounted()
        try:
            await node.connect(PeerInfo(peer, addrs), timeout=self.config.direct_timeout)
        except MeshNatError as exc:
            log.debug("connect: %s not reachable (%s): %s", peer, kind, exc)
            attempts.append(f"{kind}: {exc}")
            return None
        conns = node.connections(peer)
        if not conns:
            attempts.append(f"{kind}: the connection closed at once")
            return None
        return conns[0]

    async def connect_via(self, peer: ID, relays: Sequence[PeerInfo]) -> Path:
        """A relay circuit to `peer` through the first of `relays` that gives one (the last
        rung of `connect()`'s ladder alone, with these relays); punched in the background as
        there. Raises PeerUnavailable naming what each relay said."""
        return await self._via_relays(peer, relays, trio.current_time(), [], "no relay")

    async def _via_relays(self, peer: ID, relays: Sequence[PeerInfo], started: float,
                          attempts: list[str], none_tried: str, *, punch: bool = True) -> Path:
        node, nursery = self._mounted()
        for relay in relays:
            if self._relay_client is None:
                raise ConfigError("relays need a RelayClient to dial them")
            try:
                with trio.fail_after(self.config.relay_timeout):
                    conn = await self._relay_client.dial(relay, peer)
            except (MeshNatError, trio.TooSlowError) as exc:
                attempts.append(f"via {relay.peer_id}: {exc or 'timed out'}")
                continue
            if punch and self._puncher is not None and peer not in self._supervised:
                self._upgraded[peer] = trio.Event()
                self._supervised.add(peer)
                nursery.start_soon(self._upgrade, peer, relays)
            path = await self._found(node.describe(conn), started,
                                     attempts=[*attempts, f"relayed via {relay.peer_id}"])
            if path is not None:
                return path
            attempts.append(f"via {relay.peer_id}: the circuit closed at once")
        raise PeerUnavailable(f"no path to {peer}: " + ("; ".join(attempts) or none_tried))

    def last_punch(self, peer: ID) -> Punched | None:
        """The punch that upgraded `peer`'s relayed path, if one did."""
        return self._punched.get(peer)

    async def wait_direct(self, peer: ID, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the background punch to `peer`; True if it worked."""
        event = self._upgraded.get(peer)
        if event is None:
            return False
        with trio.move_on_after(timeout):
            await event.wait()
        return any(c.kind.is_direct for c in self._mounted()[0].connections(peer))

    def suspect(self, peer: ID) -> bool:
        """The caller got no answer from `peer` over its best path: if that is a punched
        one, the puncher checks it now (and retires it if dead; the relay then takes over).
        With no connection left, the peer is reached through a relay circuit at once. With
        only punched ones being checked (`Connection.doubtful`), a relay circuit is dialled
        beside them, so new streams have a path while the check runs, at most once per
        `suspect_circuit_interval` per peer; it is closed again if the punched path is
        confirmed. True while a path to the peer is being made or may come (a dead punched
        path is followed by a circuit): `wait_connected` is worth waiting."""
        if self._puncher is not None:
            self._puncher.suspect(peer)
        node, nursery = self._mounted()
        conns = node.connections(peer)
        if self._relays and peer not in self._reaching and all(c.doubtful for c in conns) \
                and (self._beside.allow(peer, trio.current_time()) or not conns):
            self._reaching.add(peer)
            nursery.start_soon(self._reach_again, peer, [c.conn for c in conns])
        return peer in self._reaching or peer in self._supervised

    async def wait_connected(self, peer: ID, timeout: float, *,
                             other_than: INetConn | None = None) -> Connection | None:
        """Wait up to `timeout` seconds for an open connection to `peer` (other than
        `other_than`, if given): a relay circuit after `suspect`, say. The best such
        connection, or None."""
        node, _ = self._mounted()
        arrived = trio.Event()

        def usable() -> Connection | None:
            return next((c for c in node.connections(peer) if c.conn is not other_than), None)

        def on_connected(conn: INetConn) -> None:
            if conn.muxed_conn.peer_id == peer:
                arrived.set()

        with _libp2p.watch_connections(node.host, on_connected):
            with trio.move_on_after(timeout):
                while usable() is None:
                    await arrived.wait()
                    arrived = trio.Event()
        return usable()

    async def _reach_again(self, peer: ID, doubtful: list[INetConn]) -> None:
        """A relay circuit to `peer`, which has no connection left (its punched path died)
        or only `doubtful` punched ones: punched in the background as `connect()`'s are once
        no punched one is left; closed again (once drained) if one is confirmed."""
        try:
            path = await self._via_relays(peer, self._relays, trio.current_time(), [],
                                          "no relay", punch=not doubtful)
        except MeshNatError as exc:
            log.info("connect: %s not reached again: %s", peer, exc)
            return
        finally:
            self._reaching.discard(peer)
        if not doubtful:
            return
        assert self._puncher is not None  # only punched connections are doubtful
        with trio.move_on_after(self.config.relay_drain_timeout):
            for conn in doubtful:  # bounded by the health check's own pings
                await self._puncher.wait_settled(conn)
        node, nursery = self._mounted()
        best = node.connections(peer)
        if best and best[0].kind.is_direct and not best[0].doubtful:
            log.info("connect: a direct path to %s answers; closing the circuit", peer)
            await self._close_when_drained(path.connection)
        elif not path.connection.is_closed and peer not in self._supervised:
            # the punched path died and no task here punches this peer: this one does
            self._upgraded[peer] = trio.Event()
            self._supervised.add(peer)
            nursery.start_soon(self._upgrade, peer, self._relays)

    async def _upgrade(self, peer: ID, relays: Sequence[PeerInfo]) -> None:
        """Punch `peer`'s relayed path; each time the punched path dies silently (the puncher
        retired it), stand on a relay circuit again and punch again, until the schedule gives
        up."""
        assert self._puncher is not None
        schedule = RepunchSchedule(self.config.repunch, trio.current_time())
        try:
            while (punched := await self._punch_while_relayed(peer, relays, schedule)):
                self._upgraded[peer].set()
                await _libp2p.wait_closed(punched.connection)
                if not self._puncher.died_silently(punched.connection):
                    return  # closed by an end on purpose: reached again on demand (`suspect`)
                schedule.lost(trio.current_time())
                self._upgraded[peer] = trio.Event()
                log.info("connect: the punched path to %s died; back to a relay", peer)
                if await self._relayed_again(peer, relays) is None or schedule.gave_up:
                    return
        finally:
            self._upgraded[peer].set()
            self._supervised.discard(peer)

    async def _punch_while_relayed(self, peer: ID, relays: Sequence[PeerInfo],
                                   schedule: RepunchSchedule) -> Punched | None:
        """Punch as `schedule` says, each time over a relayed path that stands (the old one,
        or a new circuit); the verified punched path, or None once the schedule gave up (or a
        direct connection needs no punch)."""
        assert self._puncher is not None
        while not schedule.gave_up:
            due = schedule.get_timer()
            if due is not None:
                await trio.sleep_until(due)
            schedule.start(trio.current_time())
            standing = await self._relayed_again(peer, relays)
            if standing is None:
                schedule.failed(trio.current_time())
                continue
            if standing.kind.is_direct:
                return None
            relayed = standing.conn
            try:
                punched = await self._puncher.punch(peer)
                await self._verify(punched)
            except MeshNatError as exc:
                log.info("connect: %s stays relayed for now: %s", peer, exc)
                schedule.failed(trio.current_time())
                continue
            schedule.punched(trio.current_time())
            self._punched[peer] = punched
            self._events(PathUpgraded(str(peer), punched.transport, punched.remote,
                                      punched.elapsed))
            if _libp2p.stream_count(relayed) == 0:
                await relayed.close()
            else:  # open streams finish on the relay; new ones take the direct path
                self._mounted()[1].start_soon(self._close_when_drained, relayed)
            return punched
        return None

    async def _verify(self, punched: Punched) -> None:
        """A punched connection must carry a stream before the relay is let go: a ping over
        it, tried twice (one lost packet is not a dead path); else it is closed."""
        node, _ = self._mounted()
        for attempt in (1, 2):
            try:
                await _libp2p.ping_over(node.host, punched.connection,
                                        timeout=self.config.ping_timeout)
                return
            except MeshNatError as exc:
                if attempt == 2:
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + self.config.ping_timeout
                        await punched.connection.close()
                    raise PeerUnavailable(f"the punched path carries nothing: {exc}") from None

    async def _relayed_again(self, peer: ID, relays: Sequence[PeerInfo]) -> Connection | None:
        """The best open connection to `peer`, else a new circuit through the first of
        `relays` that gives one; None if none does."""
        node, _ = self._mounted()
        open_now = node.connections(peer)
        if open_now or self._relay_client is None:
            return open_now[0] if open_now else None
        for relay in relays:
            try:
                with trio.fail_after(self.config.relay_timeout):
                    return node.describe(await self._relay_client.dial(relay, peer))
            except (MeshNatError, trio.TooSlowError) as exc:
                log.info("connect: no circuit to %s via %s: %s", peer, relay.peer_id,
                         exc or "timed out")
        return None

    async def _close_when_drained(self, relayed: INetConn) -> None:
        node, _ = self._mounted()
        if not await _libp2p.wait_streams_closed(node.host, relayed,
                                                 self.config.relay_drain_timeout):
            log.info("connect: closing a relayed connection with %d streams still open",
                     _libp2p.stream_count(relayed))
        await relayed.close()

    async def _found(self, found: Connection, started: float, *, attempts: list[str],
                     kind: PathKind | None = None) -> Path | None:
        """`found` as a Path, its RTT from one ping; None if the connection takes no new
        stream by the end of the ping (closed, closing, GO_AWAY): a caller never hands out a
        dying connection."""
        peer, conn, kind = found.peer, found.conn, kind or found.kind
        elapsed = trio.current_time() - started
        punched = self._punched.get(peer)
        time_to_direct = (None if not kind.is_direct else punched.elapsed
                          if kind is PathKind.PUNCHED and punched is not None else elapsed)
        node, _ = self._mounted()
        pinged = trio.current_time()
        try:
            await _libp2p.ping_over(node.host, conn, timeout=self.config.ping_timeout)
            rtt: float | None = trio.current_time() - pinged
        except MeshNatError as exc:
            log.debug("connect: no ping answer from %s: %s", peer, exc)
            rtt = None
        if not _libp2p.accepts_streams(conn):
            log.debug("connect: the connection to %s closed under the ping", peer)
            return None
        path = Path(peer, kind, found.transport, found.remote, elapsed, conn,
                    rtt=rtt, time_to_direct=time_to_direct, attempts=tuple(attempts))
        self._events(PathEstablished(str(peer), path.kind, path.transport))
        return path
