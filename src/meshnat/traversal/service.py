"""`TraversalService`: explicit traversal sessions, step by step, for applications that drive
NAT traversal themselves.

`start(peer)` opens a fresh UDP socket on each side, exchanges candidates over any existing
connection (a relay circuit included) and probes; every pair that answers is kept alive with
keepalives. `take(pair_id)` stops the traversal, frees the pair's local port and tells the
peer, which frees its end and either listens there (QUIC) or dials from it. `open_stream()`
then runs the authenticated QUIC connection on exactly that pair: same local port, so the NAT
mappings the probes made are reused, and TLS binds the connection to the peer id.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from meshnat import _libp2p, exchange
from meshnat._libp2p import ID, INetConn, INetStream, PeerInfo, TaskStatus, TProtocol
from meshnat.discovery import PeerAddressDiscovery
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    MeshNatError,
    NotMounted,
    PeerRefused,
    PeerTimeout,
    RemoteProtocolError,
    UnknownPair,
)
from meshnat.limits import SlotLimit
from meshnat.node import MeshNode
from meshnat.ratelimit import RateLimiter
from meshnat.traversal.budget import SendBudget
from meshnat.traversal.carrier import Carrier, OwnSocket, SharedPort
from meshnat.traversal.handover import Handover
from meshnat.traversal.messages import Offer, Take, TakeAccept
from meshnat.traversal.pairs import PairState, PairTable, PortPair
from meshnat.traversal.probing import ProbeCounters, run_probing
from meshnat.traversal.scope import admit_candidates, peer_scopes
from meshnat.traversal.session import PairStream, Traversal, TraversalConfig
from meshnat.traversal.sources import direct_ips, own_endpoints, peer_ips, source_network
from meshnat.wire import decode, encode, new_txid
from meshnat.wire.codec import describe
from meshnat.wire.error_response import ErrorCode, ErrorResponse, refusal_for

log = logging.getLogger(__name__)

TRAVERSAL_PROTOCOL = TProtocol("/meshnat/traversal/1.0.0")

@dataclass(frozen=True, slots=True)
class TraversalStatistics:
    open: int
    """Traversals open now (both directions)."""
    started_by_peers: int
    """Traversals peers started here since mounting."""
    refused: dict[str, int]
    """Traversals peers asked for and were refused, by the bound that refused them:
    `peer-rate`, `network-rate`, `total-rate`, `peer`, `network`, `total`."""
    unproven_bytes: int
    """Bytes (UDP/IP headers included) sent to candidate IPs not proven at the time."""
    withheld: int
    """Probes not sent because an unproven network's allowance (3x the peer's bytes) was
    spent."""
    refused_candidates: int = 0
    """Candidates peers named that this node may not probe (`traversal.scope`: loopback or
    link-local from a peer not connected from there, multicast, unspecified, broadcast, this
    node's own listen endpoints)."""


class TraversalService:
    """Explicit traversals: start, watch pairs, take one, open a stream on it."""

    protocol_id = TRAVERSAL_PROTOCOL

    def __init__(self, config: TraversalConfig | None = None, *,
                 discovery: PeerAddressDiscovery | None = None) -> None:
        self.config = config or TraversalConfig()
        self._discovery = discovery
        self._node: MeshNode | None = None
        self._nursery: trio.Nursery | None = None
        self._traversals: dict[bytes, Traversal] = {}
        cfg = self.config
        self._limiter = RateLimiter(rate=cfg.responder_rate, burst=cfg.responder_burst,
                                    max_keys=10_000)
        self._network_limiter = RateLimiter(rate=cfg.network_rate, burst=cfg.network_burst,
                                            max_keys=10_000)
        self._total_limiter = RateLimiter(rate=cfg.total_rate, burst=cfg.total_burst,
                                          max_keys=1)
        self._slots = SlotLimit(total=cfg.max_traversals,
                                per_peer=min(cfg.max_per_peer, cfg.max_traversals),
                                per_network=min(cfg.max_per_network, cfg.max_traversals))
        self._refused: Counter[str] = Counter()
        self._started_by_peers = 0
        self._refused_candidates = 0
        self._counters = ProbeCounters()
        self._handover = Handover(cfg, protocol=self.protocol_id, mounted=self._mounted,
                                  expire=self._expire)

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        node.host.set_stream_handler(self.protocol_id,
                                     _libp2p.guarded_handler("traversal", self._respond))
        try:
            async with trio.open_nursery() as nursery:
                self._node, self._nursery = node, nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            node.host.remove_stream_handler(self.protocol_id)
            with trio.CancelScope(shield=True):
                for traversal in list(self._traversals.values()):
                    traversal.stop()
                    await self._handover.close_listener(traversal)
            self._traversals.clear()
            self._node = self._nursery = None

    # --- public API ------------------------------------------------------------------------

    def traversals(self) -> list[Traversal]:
        return list(self._traversals.values())

    def statistics(self) -> TraversalStatistics:
        return TraversalStatistics(len(self._traversals), self._started_by_peers,
                                   dict(self._refused), self._counters.unproven_bytes,
                                   self._counters.withheld, self._refused_candidates)

    def pair(self, pair_id: str) -> tuple[Traversal, PortPair]:
        """The traversal holding `pair_id` and the pair; raises UnknownPair."""
        traversal = self._find(pair_id.partition(".")[0])
        self._expire(traversal)
        return traversal, traversal.table.get(pair_id)

    def _find(self, traversal_id: str) -> Traversal:
        for traversal in self._traversals.values():
            if traversal.id == traversal_id:
                return traversal
        raise UnknownPair(f"no traversal {describe(traversal_id)}")

    async def wait_for(self, ref: str, state: PairState, timeout: float) -> PortPair:
        """The first pair of traversal (or pair) `ref` in `state`, waiting up to `timeout`
        seconds; raises PeerTimeout, or UnknownPair."""
        traversal_id, _, pair_id = ref.partition(".")
        with trio.move_on_after(timeout):
            while True:
                traversal = self._find(traversal_id)
                self._expire(traversal)
                for pair in traversal.table.pairs():
                    if pair.state is state and pair_id in ("", pair.id.partition(".")[2]):
                        return pair
                await traversal.changed.wait()
        raise PeerTimeout(f"no pair of {ref} became {state.value} within {timeout} s")

    async def start(self, peer: ID, *, shared: bool = False) -> Traversal:
        """Start a traversal toward `peer`, reached over a connection the node already has.

        `shared`: probe from the node's UDP listen port (as the hole puncher does) instead of a
        fresh socket; both sides then use their listen ports and QUIC listeners.
        """
        node, _ = self._mounted()
        traversal = await self._open(new_txid(), peer, shared=shared)
        try:
            reply = await exchange.request(node, PeerInfo(peer, []), self.protocol_id,
                                           self._offer(traversal), Offer,
                                           timeout=self.config.stream_timeout)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._forget(traversal)
            raise
        traversal.budget.pay(len(encode(reply)))  # its answer pays for probes to its candidates
        self._probe(traversal, reply.candidates)
        log.debug("traversal %s: started toward %s, candidates %s", traversal.id, peer,
                  [str(c) for c in reply.candidates])
        return traversal

    async def adopt(self, txid: bytes, peer: ID, candidates: Sequence[Endpoint], *,
                    budget: SendBudget, shared: bool = True) -> Traversal:
        """Open a traversal whose candidates were already exchanged by the caller (the hole
        puncher's own coordination, which also paces both sides to start together): both sides
        adopt the same `txid`, and the pairs, `take` and `connect` work as after `start`.
        `budget`: what the peer's coordination paid for, shared with the caller's other paths."""
        traversal = await self._open(txid, peer, shared=shared, budget=budget)
        self._probe(traversal, tuple(candidates))
        return traversal

    async def take(self, pair_id: str, *, initiate: bool = True,
                   deadline: float | None = None) -> PortPair:
        """Hand `pair_id` to the transport; it must be used within `deadline` seconds.

        `initiate`: this node will dial (`connect`, `open_stream`) and the peer listens on its
        end; otherwise this node listens and the peer dials now. On the shared port the peer's
        own QUIC listener is always there, so when this node dials the peer is told in the
        background and the dial need not wait for it. Raises UnknownPair, PairExpired,
        PairTaken, PortInUse or PeerRefused (the peer did not accept).
        """
        traversal, _ = self.pair(pair_id)
        return await self._handover.take(traversal, pair_id, initiate=initiate,
                                         deadline=deadline)

    async def connect(self, pair_id: str) -> INetConn:
        """The QUIC connection on taken pair `pair_id`: dialled now if this node took it to
        dial, else the one the peer dials (waited for until the pair's deadline)."""
        traversal, pair = self.pair(pair_id)
        return await self._handover.connect(traversal, pair)

    async def open_stream(self, pair_id: str, protocol: TProtocol) -> PairStream:
        """A stream speaking `protocol` over the QUIC connection on taken pair `pair_id`."""
        conn = await self.connect(pair_id)
        _, pair = self.pair(pair_id)
        return await self._handover.open_stream(conn, pair, protocol)

    async def close(self, traversal_id: str) -> None:
        """Stop a traversal and forget it (a connection made on one of its pairs stays)."""
        traversal = self._find(traversal_id)
        await self._forget(traversal)

    async def _forget(self, traversal: Traversal) -> None:
        """Stop and unregister; an ephemeral listener stays while its connection is open
        (closing it would close the connection), and goes with it."""
        if self._traversals.pop(traversal.txid, None) is None:
            return
        if traversal.claim is not None:
            self._slots.release(traversal.claim)
            traversal.claim = None
        traversal.stop()
        if traversal.connection is None or traversal.connection.is_closed:
            await self._handover.close_listener(traversal)

    # --- responder ---------------------------------------------------------------------------

    async def _respond(self, stream: INetStream) -> None:
        peer = _libp2p.stream_peer(stream)
        limit = self.config.stream_timeout
        try:
            await self._answer_stream(stream, peer, source_network(stream), limit)
        except MeshNatError as exc:
            log.debug("traversal: request from %s dropped: %s", peer, exc)
            await _libp2p.reset_quietly(stream)

    async def _answer_stream(self, stream: INetStream, peer: ID, network: str,
                             limit: float) -> None:
        with _libp2p.map_peer_errors("traversal request", limit), trio.fail_after(limit):
            request: Offer | Take | None = None
            try:
                frame = await _libp2p.read_frame(stream)
                request = decode(frame, Offer, Take)
                reply: Offer | TakeAccept | ErrorResponse = await self._answer(
                    peer, network, request, len(frame))
            except PeerRefused as exc:  # refused here: answer with the request's txid
                assert request is not None
                code = (ErrorCode.RATE_LIMITED if exc.code == "rate-limited"
                        else ErrorCode.BAD_REQUEST)
                reply = ErrorResponse(request.txid, code, exc.reason[:120])
            except RemoteProtocolError as exc:
                reply = refusal_for(exc)
            except MeshNatError as exc:
                assert request is not None
                reply = ErrorResponse(request.txid, ErrorCode.UNAVAILABLE, str(exc)[:120])
            await _libp2p.write_frame(stream, encode(reply))
            await stream.close()
        if isinstance(request, Take) and request.dial and isinstance(reply, TakeAccept):
            await self._dial_taken(peer, request)

    async def _answer(self, peer: ID, network: str, request: Offer | Take,
                      paid: int) -> Offer | TakeAccept:
        if isinstance(request, Offer):
            self._admit(peer, network)
            started = await self._open(request.txid, peer, shared=request.shared,
                                       network=network, budget=SendBudget(paid=paid))
            self._started_by_peers += 1
            self._probe(started, request.candidates)
            log.info("traversal %s: started by %s (%s)", started.id, peer, network)
            return self._offer(started)
        traversal = self._traversals.get(request.txid)
        if traversal is None or traversal.peer != peer:
            raise UnknownPair("no such traversal with this peer")
        return await self._handover.accept(traversal, request)

    async def _dial_taken(self, peer: ID, request: Take) -> None:
        traversal = self._traversals.get(request.txid)
        if traversal is not None:
            await self._handover.dial_taken(traversal, peer)

    # --- both sides --------------------------------------------------------------------------

    def _mounted(self) -> tuple[MeshNode, trio.Nursery]:
        if self._node is None or self._nursery is None:
            raise NotMounted("mount TraversalService on a running MeshNode first")
        return self._node, self._nursery

    def _admit(self, peer: ID, network: str) -> None:
        """Start rates: per peer, per source network, in total; raises PeerRefused."""
        now = trio.current_time()
        for bound, limiter, key in (("peer-rate", self._limiter, str(peer)),
                                    ("network-rate", self._network_limiter, network),
                                    ("total-rate", self._total_limiter, None)):
            if not limiter.allow(key, now):
                self._refused[bound] += 1
                log.debug("traversal: refused %s (%s): %s", peer, network, bound)
                raise PeerRefused("rate-limited", f"too many traversals ({bound})")

    async def _open(self, txid: bytes, peer: ID, *, shared: bool, network: str | None = None,
                    budget: SendBudget | None = None) -> Traversal:
        """`network`: the peer started it, from there (a slot is claimed); None: this node."""
        node, _ = self._mounted()
        await self._evict_finished()
        if txid in self._traversals:
            raise PeerRefused("bad-request", "traversal id in use")
        claim = None
        if network is not None:  # this node's own traversals are bounded by its own calls
            claim = self._slots.acquire(str(peer), network)
            if claim is None:
                bound = self._slots.last_refusal or "total"
                self._refused[bound] += 1
                log.debug("traversal: refused %s (%s): %s slots held", peer, network, bound)
                raise PeerRefused("rate-limited", f"too many traversals open ({bound})")
        try:
            carrier: Carrier = (SharedPort(node) if shared
                                else await OwnSocket.open(node.listen_endpoint("udp").ip))
        except BaseException:
            if claim is not None:
                self._slots.release(claim)
            raise
        budget = budget if budget is not None else SendBudget(paid=0)
        for ip in direct_ips(node, peer):
            budget.prove(ip)
        traversal = Traversal(txid.hex()[:8], txid, peer,
                              PairTable(txid.hex()[:8], carrier.local_port,
                                        pair_timeout=self.config.pair_timeout),
                              trio.current_time(), carrier, shared, by_peer=claim is not None,
                              budget=budget, claim=claim)
        self._traversals[txid] = traversal
        return traversal

    async def _evict_finished(self) -> None:
        """Forget traversals that can give nothing more: taken and done with (expired, or its
        connection closed), probed to the end without a pair coming alive, or running for
        `max_untaken` without a pair taken."""
        now = trio.current_time()
        for traversal in list(self._traversals.values()):
            self._expire(traversal)
            states = {p.state for p in traversal.table.pairs()}
            conn = traversal.connection
            age = now - traversal.started
            used_up = traversal.closed and (conn.is_closed if conn is not None
                                            else PairState.TAKEN not in states)
            fruitless = (age > self.config.probe_timeout
                         and PairState.ALIVE not in states and PairState.TAKEN not in states)
            idle = traversal.dialer is None and age > self.config.max_untaken
            if used_up or fruitless or idle:
                log.info("traversal %s: finished, forgotten", traversal.id)
                await self._forget(traversal)

    def _offer(self, traversal: Traversal) -> Offer:
        """Candidates, best first: on the shared port, the public endpoint discovery confirmed
        for it; then the public IP discovery saw with our port (NATs that keep ports map it
        there); then the node's own addresses."""
        node, _ = self._mounted()
        port = traversal.table.local_port
        candidates = [Endpoint(e.ip, port) for e in node.local_endpoints("udp")]
        seen = self._discovery.last_round("udp") if self._discovery else None
        if seen is not None and seen.ip is not None:
            candidates.insert(0, Endpoint(seen.ip, port))
        if traversal.shared and seen is not None and seen.address is not None:
            candidates.insert(0, seen.address)
        return Offer(traversal.txid, tuple(dict.fromkeys(candidates)), traversal.shared,
                     bytes(self.config.offer_padding))

    def _probe(self, traversal: Traversal, candidates: tuple[Endpoint, ...]) -> None:
        node, nursery = self._mounted()
        candidates, refused = admit_candidates(
            candidates, peer_scopes(peer_ips(node, traversal.peer)), own_endpoints(node))
        if refused:
            self._refused_candidates += refused
            log.debug("traversal %s: %d candidates of %s refused (scope)", traversal.id,
                      refused, traversal.peer)
        now = trio.current_time()
        traversal.started = now  # probing starts now, whatever the exchange before cost
        for candidate in candidates:
            traversal.table.add_candidate(candidate, now)
        nursery.start_soon(self._run_probing, traversal)

    async def _run_probing(self, traversal: Traversal) -> None:
        await run_probing(traversal, self.config, self._counters, self._expire)

    def _expire(self, traversal: Traversal) -> None:
        now = trio.current_time()
        expired = traversal.table.expire_stale(now)
        for pair in expired:
            log.info("traversal %s: pair %s expired (silent)", traversal.id, pair.id)
        for pair in traversal.table.pairs():
            if pair.state is PairState.TAKEN and pair.deadline is not None and \
                    now >= pair.deadline and traversal.connection is None:
                expired.append(traversal.table.expire(pair.id))
                log.info("traversal %s: pair %s expired unused", traversal.id, pair.id)
        if expired:
            traversal.notify()
