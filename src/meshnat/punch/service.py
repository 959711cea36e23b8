"""`HolePuncher`: coordinate over an existing connection, punch UDP and TCP, keep the winner.

Coordination follows libp2p DCUtR's timing: the initiator sends its Offer in the same write as
the stream's protocol negotiation (`_libp2p.open_stream_sending`), measures the round trip from
that write to the responder's first frame back, less the turnaround the responder's Offer
states (its processing from the stream's arrival to that frame: `plan.network_rtt`), sends
Sync and punches RTT/2 later; the responder punches as
soon as Sync arrives, so both start at about the same moment. Each side plans the punch from
the two Offers (`punch/plan.py`), then races the UDP and TCP paths (`punch/race.py`); the first
direct connection wins and is kept alive until it dies (`punch/keepalive.py`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from functools import partial

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn, INetStream, TaskStatus, TProtocol
from meshnat.discovery import PeerAddressDiscovery
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    MeshNatError,
    NotMounted,
    PunchFailed,
    RemoteProtocolError,
)
from meshnat.events import EventSink, PunchAbandoned, PunchSucceeded, ignore_events
from meshnat.limits import Claim, SlotLimit
from meshnat.node import MeshNode
from meshnat.punch.config import PunchConfig
from meshnat.punch.coordination import pay, read_paid, read_until_closed
from meshnat.punch.keepalive import PathKeeper
from meshnat.punch.messages import MappingHint, Offer, Sync
from meshnat.punch.plan import Role, network_rtt, plan_punch, punch_wait
from meshnat.punch.race import PathRace
from meshnat.punch.results import Punched, PunchStatistics
from meshnat.ratelimit import RateLimiter
from meshnat.traversal import TraversalConfig, TraversalService
from meshnat.traversal.budget import SendBudget
from meshnat.traversal.sources import source_network
from meshnat.wire import TXID_SIZE, decode, encode, frame_stream, new_txid
from meshnat.wire.error_response import ErrorCode, ErrorResponse, refusal_for

log = logging.getLogger(__name__)

PUNCH_PROTOCOL = TProtocol("/meshnat/punch/1.2.0")
"""1.1.0: the Offer carries a mapping hint per IP family (field 14, IPv6; required). 1.2.0: it
carries the responder's turnaround (field 15, µs; required). Neither older version is spoken
(a 1.1.0 peer's stream is refused at negotiation and the punch fails over to the relay, as
1.0.0's did at 1.1.0): the decoders stay strict."""

__all__ = ["PUNCH_PROTOCOL", "HolePuncher", "PunchConfig", "PunchStatistics", "Punched"]


class HolePuncher:
    """Opens direct connections to peers this node can already talk to (e.g. via a relay)."""

    protocol_id = PUNCH_PROTOCOL

    def __init__(self, config: PunchConfig | None = None, *,
                 discovery: PeerAddressDiscovery | None = None,
                 traversals: TraversalService | None = None,
                 events: EventSink = ignore_events) -> None:
        """`traversals`: a TraversalService already mounted on the node, for the UDP path;
        without one the puncher runs its own."""
        self.config = config or PunchConfig()
        self._discovery = discovery
        self._own_traversals = traversals is None
        self.traversals = traversals or TraversalService(TraversalConfig(
            probe_interval=self.config.probe_interval, probe_timeout=self.config.punch_timeout,
            stream_timeout=self.config.stream_timeout), discovery=discovery)
        self._race = PathRace(self.traversals)
        self._events = events
        self._node: MeshNode | None = None
        self._paths = PathKeeper(self.config.health, events=events)
        cfg = self.config
        self._limits = (
            ("peer-rate", RateLimiter(rate=cfg.responder_rate, burst=cfg.responder_burst,
                                      max_keys=10_000)),
            ("network-rate", RateLimiter(rate=cfg.network_rate, burst=cfg.network_burst,
                                         max_keys=10_000)),
            ("total-rate", RateLimiter(rate=cfg.total_rate, burst=cfg.total_burst,
                                       max_keys=1)))
        self._slots = SlotLimit(total=cfg.max_responding, per_peer=1,
                                per_network=min(cfg.max_responding_per_network,
                                                cfg.max_responding))
        self._refused: Counter[str] = Counter()

    def statistics(self) -> PunchStatistics:
        race = self._race
        return PunchStatistics(responding=self._slots.held, refused=dict(self._refused),
                               unproven_bytes=race.unproven_bytes, withheld=race.withheld,
                               paid=race.paid, refused_candidates=race.refused_candidates,
                               paths=self._paths.statistics())

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        """Answer punches and keep punched paths; while mounted, the node labels the
        connections this puncher holds as punched (`MeshNode.track_punched`)."""
        self._node = node
        try:
            with (
                node.track_punched(self),
                _libp2p.handling(node.host, self.protocol_id, "punch", self._respond),
            ):
                async with trio.open_nursery() as nursery:
                    await nursery.start(partial(self._paths.run, node.host))
                    if self._own_traversals:
                        await nursery.start(partial(self.traversals.serve, node))
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._node = None

    # --- initiator ---------------------------------------------------------------------------

    async def punch(self, peer: ID) -> Punched:
        """Open a direct connection to `peer` over an existing (e.g. relayed) connection.

        The connection is then kept alive with pings until it dies; then it is closed and
        reported as `PathLost` (punching again is the caller's choice: the Connector does).
        Raises PunchFailed (no path; the existing connection stays usable), PeerUnavailable or
        PeerTimeout (coordination failed) or a RemoteProtocolError subclass.
        """
        try:
            result = await self._punch(peer)
        except PunchFailed as exc:
            self._events(PunchAbandoned(str(peer), exc.reason))
            raise
        self._events(PunchSucceeded(str(peer), result.transport, result.remote, result.elapsed))
        self._paths.keep(result)
        return result

    async def _punch(self, peer: ID) -> Punched:
        node = self._mounted()
        started = trio.current_time()
        limit = self.config.stream_timeout
        offer = self._offer(new_txid())
        sent_at = [trio.current_time()]

        def written() -> None:  # not the stream's opening before it (a muxer's, a relay's)
            sent_at[0] = trio.current_time()

        # the Offer goes out with the stream's negotiation: one round trip to the peer's Offer
        stream = await _libp2p.open_stream_sending(node.host, peer, self.protocol_id,
                                                   frame_stream(encode(offer)), limit,
                                                   on_written=written)
        try:
            with _libp2p.map_peer_errors("punch coordination", limit), trio.fail_after(limit):
                budget = SendBudget(paid=0)
                first = await _libp2p.read_frame(stream)
                measured = trio.current_time() - sent_at[0]  # the first frame: Padding or Offer
                reply = await read_paid(stream, first, budget, Offer, ErrorResponse)
                if isinstance(reply, ErrorResponse):
                    raise PunchFailed(f"the peer refused: {reply.code.name.lower()}: "
                                      f"{reply.reason}")
                theirs = reply
                rtt = network_rtt(measured, theirs.turnaround)
                if theirs.txid != offer.txid:
                    raise PunchFailed("the peer answered another punch")
                plan = plan_punch(offer, theirs, Role.INITIATOR, self.config)
                if plan.give_up:
                    raise PunchFailed(plan.give_up)
                await pay(stream, offer.txid, plan.padding)  # birthday only
                await _libp2p.write_frame(stream, encode(Sync(offer.txid)))
            if plan.half_rtt_delay:  # DCUtR: the initiator punches RTT/2 after Sync
                await trio.sleep(punch_wait(measured, theirs.turnaround))
            result = await self._race.run(node, peer, offer, theirs, plan, rtt=rtt,
                                          started=started, budget=budget)
        finally:
            await _libp2p.reset_quietly(stream)
        return result

    # --- responder ---------------------------------------------------------------------------

    def _admit(self, peer: ID, network: str) -> Claim | str:
        """A responder slot for `peer` from `network`, or the bound that refused it."""
        now = trio.current_time()
        for bound, limiter, key in zip(("peer-rate", "network-rate", "total-rate"),
                                       (lim for _, lim in self._limits),
                                       (str(peer), network, None), strict=True):
            if not limiter.allow(key, now):
                return bound
        claim = self._slots.acquire(str(peer), network)
        return claim if claim is not None else (self._slots.last_refusal or "total")

    async def _respond(self, stream: INetStream) -> None:
        node = self._mounted()
        arrived = _libp2p.negotiation_started(stream) or trio.current_time()
        peer = _libp2p.stream_peer(stream)
        network = source_network(stream)
        limit = self.config.stream_timeout
        claim = self._admit(peer, network)
        if not isinstance(claim, Claim):
            self._refused[claim] += 1
            log.debug("punch: refused %s (%s): %s", peer, network, claim)
            with _libp2p.map_peer_errors("punch refusal", limit), trio.fail_after(limit):
                await _libp2p.write_frame(stream, encode(ErrorResponse(
                    bytes(TXID_SIZE), ErrorCode.RATE_LIMITED, f"too many punches ({claim})")))
                await stream.close()
            return
        try:
            with _libp2p.map_peer_errors("punch coordination", limit), trio.fail_after(limit):
                frame = await _libp2p.read_frame(stream)
                try:
                    theirs = decode(frame, Offer)
                except RemoteProtocolError as exc:
                    await _libp2p.write_frame(stream, encode(refusal_for(exc)))
                    raise
                budget = SendBudget(paid=len(frame))
                offer = self._offer(theirs.txid)
                plan = plan_punch(offer, theirs, Role.RESPONDER, self.config)
                # the initiator times its RTT to our first frame (Padding or Offer): say how
                # much of it was ours, from the stream's arrival on
                offer = dataclasses.replace(offer, turnaround=round(
                    (trio.current_time() - arrived) * 1e6))
                await pay(stream, offer.txid, plan.padding)
                await _libp2p.write_frame(stream, encode(offer))
                offered_at = trio.current_time()
                if plan.give_up:  # the initiator sees it too: let it read our Offer first
                    await read_until_closed(stream, limit)
                    raise PunchFailed(plan.give_up)
                sync = await read_paid(stream, await _libp2p.read_frame(stream), budget,
                                       Sync)
                if sync.txid != offer.txid:
                    raise PunchFailed("sync for another punch")
                rtt = trio.current_time() - offered_at  # our Offer out, their Sync back
            result = await self._race.run(node, peer, offer, theirs, plan, rtt=rtt,
                                          started=trio.current_time(), budget=budget)
            log.info("punch: responded to %s: %s path %s", peer, result.transport, result.remote)
            self._paths.keep(result)
        except MeshNatError as exc:
            log.info("punch: responding to %s ended: %s", peer, exc)
        finally:
            self._slots.release(claim)
            await _libp2p.reset_quietly(stream)

    # --- keeping the path (punch/keepalive.py) -------------------------------------------------

    def punched(self, peer: ID) -> Punched | None:
        """The punched connection to `peer` being kept alive now (either side), if any."""
        return self._paths.punched(peer)

    def died_silently(self, conn: INetConn) -> bool:
        """True if `conn` was a punched connection retired because pings found it dead (a
        flushed NAT binding), not one closed by either end."""
        return self._paths.died_silently(conn)

    def suspect(self, peer: ID) -> None:
        """The caller saw `peer`'s punched path fail (no answer): check it now, and retire
        it if it is dead."""
        self._paths.suspect(peer)

    def doubtful(self, conn: INetConn) -> bool:
        """True while the punched `conn` is probed after a suspected failure (not confirmed
        since): the node then ranks it after a relayed connection."""
        return self._paths.doubtful(conn)

    async def wait_settled(self, conn: INetConn) -> bool:
        """Wait until the health check confirms the punched `conn` (True) or retires it, or
        it is no longer kept (False)."""
        return await self._paths.wait_settled(conn)

    # --- both sides --------------------------------------------------------------------------

    def _mounted(self) -> MeshNode:
        if self._node is None:
            raise NotMounted("mount HolePuncher on a running MeshNode first")
        return self._node

    def _offer(self, txid: bytes) -> Offer:
        node = self._mounted()
        candidates: dict[str, list[Endpoint]] = {}
        tcp_seen = self._discovery.last_round("tcp") if self._discovery else None
        reachable = (tcp_seen is not None and tcp_seen.address is not None
                     and tcp_seen.address in node.local_endpoints("tcp"))
        for transport in ("udp", "tcp"):
            local = node.local_endpoints(transport)
            public: list[Endpoint] = []
            seen = self._discovery.last_round(transport) if self._discovery else None
            if seen is not None and seen.address is not None:
                public = [seen.address]
            elif seen is not None and seen.ip is not None and local:
                # no port won (endpoint-dependent mapping): the IP is what birthday probing needs
                public = [Endpoint(seen.ip, local[0].port)]
            seen6 = self._discovery.latest(transport, 6) if self._discovery else None
            if seen6 is not None and seen6.address is not None:  # confirmed IPv6 mapping
                public.append(seen6.address)
            candidates[transport] = list(dict.fromkeys(public + local))
        return Offer(txid, tuple(candidates["udp"]), tuple(candidates["tcp"]),
                     self._mapping(4), reachable, bytes(self.config.offer_padding),
                     self._mapping(6))

    def _mapping(self, version: int) -> MappingHint:
        """This node's mapping hint for IP `version`: the configured one, else what
        discovery's last UDP round of that family showed (a node whose reflectors are found
        at run time, as in the mesh, has no hint to configure)."""
        hint = self.config.mapping if version == 4 else self.config.mapping6
        seen = self._discovery.last_round("udp", version) if self._discovery else None
        if hint is MappingHint.UNKNOWN and seen is not None:
            return MappingHint.from_consensus(seen)
        return hint
