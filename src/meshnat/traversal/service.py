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

import hmac
import logging
import math
from collections.abc import Sequence

import trio

from meshnat import _libp2p, exchange
from meshnat._libp2p import ID, INetConn, INetStream, TaskStatus, TProtocol
from meshnat.discovery import PeerAddressDiscovery
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ConfigError,
    LocalProtocolError,
    MeshNatError,
    NotMounted,
    PeerRefused,
    PeerTimeout,
    PeerUnavailable,
    PortInUse,
    RemoteProtocolError,
    UnknownPair,
)
from meshnat.node import MeshNode
from meshnat.traversal.admission import Admission
from meshnat.traversal.budget import SendBudget
from meshnat.traversal.carrier import Carrier, OwnSocket, SharedPort
from meshnat.traversal.config import TraversalConfig
from meshnat.traversal.core import ProbeCounters, TraversalSession
from meshnat.traversal.driver import Driver
from meshnat.traversal.handover import Handover
from meshnat.traversal.messages import (
    ID_IN_USE,
    UNAVAILABLE,
    UNKNOWN_TRAVERSAL,
    Offer,
    Refusal,
    Take,
    TakeAccept,
)
from meshnat.traversal.pairs import PairId, PairState, PortPair, parse_ref, traversal_id
from meshnat.traversal.scope import admit_candidates, peer_scopes
from meshnat.traversal.session import PairStream, Traversal
from meshnat.traversal.sources import (
    direct_ips,
    offer_candidates,
    own_endpoints,
    peer_ips,
    source_network,
)
from meshnat.traversal.statistics import TraversalStatistics
from meshnat.wire import decode, encode, new_txid
from meshnat.wire.codec import describe
from meshnat.wire.error_response import ErrorResponse, refusal_for

log = logging.getLogger(__name__)

TRAVERSAL_PROTOCOL = TProtocol("/meshnat/traversal/1.0.0")


class TraversalService:
    """Explicit traversals: start, watch pairs, take one, open a stream on it."""

    protocol_id = TRAVERSAL_PROTOCOL

    def __init__(self, config: TraversalConfig | None = None, *,
                 discovery: PeerAddressDiscovery | None = None) -> None:
        self.config = config or TraversalConfig()
        self._discovery = discovery
        self._node: MeshNode | None = None
        self._nursery: trio.Nursery | None = None
        self._traversals: dict[str, Traversal] = {}  # by traversal id
        self._admission = Admission(self.config)
        self._started_by_peers = 0
        self._refused_candidates = 0
        self._counters = ProbeCounters()
        self._handover = Handover(self.config, protocol=self.protocol_id,
                                  mounted=self._mounted)
        self._driver = Driver(self._handover)

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        try:
            with _libp2p.handling(node.host, self.protocol_id, "traversal", self._respond):
                async with trio.open_nursery() as nursery:
                    self._node, self._nursery = node, nursery
                    task_status.started()
                    await trio.sleep_forever()
        finally:
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
                                   dict(self._admission.refused), self._counters.unproven_bytes,
                                   self._counters.withheld, self._refused_candidates)

    def pair(self, pair_id: str | PairId) -> tuple[Traversal, PortPair]:
        """The traversal holding `pair_id` and the pair; raises UnknownPair."""
        ref = PairId.parse(pair_id) if isinstance(pair_id, str) else pair_id
        traversal = self._find(ref.traversal)
        return traversal, traversal.table.get(ref)

    def _find(self, traversal_id: str) -> Traversal:
        traversal = self._traversals.get(traversal_id)
        if traversal is None:
            raise UnknownPair(f"no traversal {describe(traversal_id)}")
        return traversal

    async def wait_for(self, ref: str, state: PairState, timeout: float, *,
                       or_heard: bool = False) -> PortPair:
        """The first pair of traversal (or pair) `ref` in `state`, waiting up to `timeout`
        seconds; with `or_heard`, a pair still probing that the peer was heard on (its probe,
        with the traversal's txid, arrived) will do too. Raises PeerTimeout, or UnknownPair."""
        traversal_id, index = parse_ref(ref)
        with trio.move_on_after(timeout):
            while True:
                traversal = self._find(traversal_id)
                pairs = [p for p in traversal.table.pairs() if index in (None, p.ref.index)]
                for pair in pairs:
                    if pair.state is state:
                        return pair
                for pair in pairs if or_heard else ():
                    if pair.state is PairState.PROBING and pair.last_seen is not None:
                        return pair
                await traversal.changed.wait()
        raise PeerTimeout(f"no pair of {ref} became {state.value} within {timeout} s")

    async def start(self, peer: ID, *, shared: bool = False) -> Traversal:
        """Start a traversal toward `peer`, reached over a connection the node already has.

        `shared`: probe from the node's UDP listen port (as the hole puncher does) instead of a
        fresh socket; both sides then use their listen ports and QUIC listeners.
        """
        node, _ = self._mounted()
        txid = next((t for t in (new_txid() for _ in range(8))
                     if traversal_id(t) not in self._traversals), None)
        if txid is None:
            raise LocalProtocolError("no free traversal id")
        traversal = await self._open_own(txid, peer, shared=shared)
        try:
            reply = await exchange.request(node, _libp2p.peer_by_id(peer), self.protocol_id,
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
                    budget: SendBudget, shared: bool = True,
                    dial_early: bool = False) -> Traversal:
        """Open a traversal whose candidates were already exchanged by the caller (the hole
        puncher's own coordination, which also paces both sides to start together): both sides
        adopt the same `txid`, and the pairs, `take` and `connect` work as after `start`.
        `budget`: what the peer's coordination paid for, shared with the caller's other paths.
        `dial_early`: this node will take a pair and dial (the punch initiator): its QUIC
        Initial to the best candidate goes with the first probes (`traversal/early.py`).
        Raises PeerRefused when a traversal with that id is open already."""
        traversal = await self._open_own(txid, peer, shared=shared, budget=budget)
        self._probe(traversal, tuple(candidates), dial_early=dial_early)
        return traversal

    async def take(self, pair_id: str | PairId, *, initiate: bool = True,
                   deadline: float | None = None, on_heard: bool = False,
                   tell_peer: bool = True) -> PortPair:
        """Hand `pair_id` to the transport; it must be used within `deadline` seconds.

        `initiate`: this node will dial (`connect`, `open_stream`) and the peer listens on its
        end; otherwise this node listens and the peer dials now. On the shared port the peer's
        own QUIC listener is always there, so when this node dials the peer is told in the
        background and the dial need not wait for it; `tell_peer=False` does not tell it at
        all (the hole puncher: its peer waits for the connection, not for a Take).
        `on_heard` (with `initiate`): a pair the peer was heard on may be taken before our own
        probe was answered (`PairTable.take`). Raises UnknownPair, PairExpired, PairTaken,
        PortInUse or PeerRefused (the peer did not accept).
        """
        if deadline is not None and not (math.isfinite(deadline) and 0 < deadline <= 600):
            raise ConfigError(f"deadline must be within (0, 600] seconds, got {describe(deadline)}")
        traversal, pair = self.pair(pair_id)
        use_within = self.config.take_deadline if deadline is None else deadline
        taken = traversal.session.take(pair.ref, trio.current_time(), dial=initiate,
                                       use_within=use_within, on_heard=on_heard and initiate)
        log.info("traversal %s: took pair %s (%s -> %s), %s", traversal.id, taken.id,
                 taken.local_port, taken.remote, "dialling" if initiate else "listening")
        await self._driver.drain(traversal)  # the carrier stops; a listener if not dialling
        if traversal.shared and initiate:
            if tell_peer:
                self._handover.tell_peer_soon(traversal, taken)
            return taken
        try:
            await self._handover.tell_peer(traversal, taken)
        except MeshNatError:
            traversal.session.take_refused(trio.current_time())
            with trio.CancelScope(shield=True):
                await self._driver.drain(traversal)
            raise
        return taken

    async def connect(self, pair_id: str | PairId) -> INetConn:
        """The QUIC connection on taken pair `pair_id`: dialled now if this node took it to
        dial, else the one the peer dials (waited for until the pair's deadline)."""
        traversal, pair = self.pair(pair_id)
        return await self._handover.connect(traversal, pair)

    async def open_stream(self, pair_id: str | PairId, protocol: TProtocol) -> PairStream:
        """A stream speaking `protocol` over the QUIC connection on taken pair `pair_id`."""
        conn = await self.connect(pair_id)
        _, pair = self.pair(pair_id)
        return await self._handover.open_stream(conn, pair, protocol)

    async def close(self, traversal_id: str) -> None:
        """Stop a traversal and forget it (a connection made on one of its pairs stays)."""
        await self._forget(self._find(traversal_id))

    async def _forget(self, traversal: Traversal) -> None:
        """Stop and unregister; an ephemeral listener stays while its connection is open
        (closing it would close the connection), and goes with it."""
        if self._traversals.pop(traversal.id, None) is None:
            return
        if traversal.claim is not None:
            self._admission.release(traversal.claim)
            traversal.claim = None
        traversal.running.cancel()
        traversal.stop()
        if traversal.early is not None:  # its window's timer was the driver's, gone now
            self._handover.abandon_early(traversal, traversal.early.remote)
        if traversal.connection is None or traversal.connection.is_closed:
            await self._handover.close_listener(traversal)

    # --- responder ---------------------------------------------------------------------------

    async def _respond(self, stream: INetStream) -> None:
        peer = _libp2p.stream_peer(stream)
        limit = self.config.stream_timeout
        try:
            with _libp2p.map_peer_errors("traversal request", limit), trio.fail_after(limit):
                frame = await _libp2p.read_frame(stream)
                await _libp2p.write_frame(stream, encode(await self._reply(peer, stream, frame)))
                await stream.close()
        except (RemoteProtocolError, PeerTimeout, PeerUnavailable) as exc:
            log.debug("traversal: request from %s dropped: %s", peer, exc)
            await _libp2p.reset_quietly(stream)

    async def _reply(self, peer: ID, stream: INetStream,
                     frame: bytes) -> Offer | TakeAccept | ErrorResponse:
        """The answer to `frame`: a refusal is answered under the request's txid (under
        zeros if it does not decode), with a fixed reason."""
        try:
            request = decode(frame, Offer, Take)
        except RemoteProtocolError as exc:
            log.debug("traversal: undecodable request from %s: %s", peer, exc)
            return refusal_for(exc)
        now = trio.current_time()
        if isinstance(request, Offer):
            network = source_network(stream)
            refusal = self._admission.admit(str(peer), network, now)
            started = refusal or await self._open(request.txid, peer, shared=request.shared,
                                                  budget=SendBudget(paid=len(frame)),
                                                  network=network)
            if isinstance(started, Refusal):
                log.debug("traversal: refused %s (%s): %s", peer, network, started.reason)
                return started.answer(request.txid)
            self._started_by_peers += 1
            self._probe(started, request.candidates)
            log.info("traversal %s: started by %s (%s)", started.id, peer, network)
            return self._offer(started)
        traversal = self._traversals.get(traversal_id(request.txid))
        if traversal is None or traversal.peer != peer or \
                not hmac.compare_digest(traversal.txid, request.txid):
            return UNKNOWN_TRAVERSAL.answer(request.txid)
        taken = traversal.session.peer_take(request, now)
        if isinstance(taken, Refusal):
            return taken.answer(request.txid)
        log.info("traversal %s: peer took pair %s, %s", traversal.id, taken.id,
                 "dialling" if request.dial else "listening")
        try:
            await self._driver.drain(traversal)  # the carrier stops; we listen, or dial
        except (PortInUse, OSError) as exc:  # ours, not the peer's: its text stays here
            log.info("traversal %s: cannot listen on pair %s: %s", traversal.id, taken.id, exc)
            return UNAVAILABLE.answer(request.txid)
        return TakeAccept(request.txid)

    # --- both sides --------------------------------------------------------------------------

    def _mounted(self) -> tuple[MeshNode, trio.Nursery]:
        if self._node is None or self._nursery is None:
            raise NotMounted("mount TraversalService on a running MeshNode first")
        return self._node, self._nursery

    async def _open_own(self, txid: bytes, peer: ID, *, shared: bool,
                        budget: SendBudget | None = None) -> Traversal:
        """Open a traversal this node starts (bounded by its own calls only)."""
        opened = await self._open(txid, peer, shared=shared, budget=budget)
        if isinstance(opened, Refusal):
            raise PeerRefused("bad-request", opened.reason)
        return opened

    async def _open(self, txid: bytes, peer: ID, *, shared: bool, budget: SendBudget | None,
                    network: str | None = None) -> Traversal | Refusal:
        """`network`: the peer started it, from there (a slot is claimed); None: this node."""
        node, _ = self._mounted()
        await self._evict_finished()
        if traversal_id(txid) in self._traversals:
            return ID_IN_USE
        claim = None if network is None else self._admission.claim(str(peer), network)
        if isinstance(claim, Refusal):
            return claim
        try:
            carrier: Carrier = (SharedPort(node) if shared else await OwnSocket.open(
                *(node.listen_endpoint("udp", v).ip for v in sorted(node.ip_versions))))
        except BaseException as exc:
            if claim is None:
                raise
            self._admission.release(claim)
            if not isinstance(exc, OSError):
                raise
            log.warning("traversal: no socket for one %s started: %s", peer, exc)
            return UNAVAILABLE  # ours, not the peer's: its text stays here
        budget = budget if budget is not None else SendBudget(paid=0)
        for ip in direct_ips(node, peer):
            budget.prove(ip)
        session = TraversalSession(txid, carrier.local_port, self.config, trio.current_time(),
                                   budget=budget, counters=self._counters)
        traversal = Traversal(peer, session, carrier, shared, claim=claim)
        self._traversals[traversal.id] = traversal
        return traversal

    async def _evict_finished(self) -> None:
        """Forget traversals that can give nothing more (`TraversalSession.retirement`)."""
        now = trio.current_time()
        for traversal in list(self._traversals.values()):
            retired = traversal.session.retirement(now)
            if retired is not None:
                log.info("traversal %s: finished (%s), forgotten", traversal.id, retired.value)
                await self._forget(traversal)

    def _offer(self, traversal: Traversal) -> Offer:
        node, _ = self._mounted()
        candidates = offer_candidates(node, self._discovery, traversal.table.local_port,
                                      shared=traversal.shared)
        return Offer(traversal.txid, candidates, traversal.shared,
                     bytes(self.config.offer_padding))

    def _probe(self, traversal: Traversal, candidates: tuple[Endpoint, ...], *,
               dial_early: bool = False) -> None:
        """Start probing the candidates this node may probe, and the traversal's driver."""
        node, nursery = self._mounted()
        candidates, refused = admit_candidates(
            candidates, peer_scopes(peer_ips(node, traversal.peer)), own_endpoints(node))
        # a family the carrier has no socket of cannot be probed (an IPv4-only node's IPv6)
        carrier = traversal.carrier
        versions = carrier.versions if carrier is not None else frozenset[int]()
        candidates = tuple(c for c in candidates if c.ip.version in versions)
        if refused:
            self._refused_candidates += refused
            log.debug("traversal %s: %d candidates of %s refused (scope)", traversal.id,
                      refused, traversal.peer)
        traversal.session.start(candidates, trio.current_time(), dial_early=dial_early)
        nursery.start_soon(self._driver.run, traversal)
