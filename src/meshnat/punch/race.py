"""The race of a coordinated punch: UDP and TCP at once, the first direct connection wins.

Which paths run and how is the `PunchPlan` (`punch/plan.py`); this module only carries it out.
The UDP path is a traversal (`TraversalService`) on the node's shared QUIC port: the initiator
takes the first pair that comes alive and dials QUIC from that very port (TLS binds the
connection to the peer id); against an endpoint-dependent NAT it is birthday probing instead.
The TCP path is a simultaneous open from both TCP listen ports, upgraded by Noise with fixed
roles (`_libp2p.dial_tcp_from`). When the plan says `tcp_after_udp` it waits for the UDP path:
it starts if UDP heard nothing within `tcp_grace(rtt)` or failed, and never once UDP connected.
Every packet is paid for by the peer's coordination (`SendBudget`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn
from meshnat.endpoint import Endpoint, interleave_families
from meshnat.errors import MeshNatError, PeerTimeout, PunchFailed, UnknownPair
from meshnat.node import MeshNode
from meshnat.punch.birthday import EasySideSession, HardSideSession
from meshnat.punch.messages import Offer
from meshnat.punch.payment import probes_allowed
from meshnat.punch.plan import (
    BACKSTOP,
    Birthday,
    PunchPlan,
    TcpPath,
    UdpPath,
    tcp_grace,
    traversal_candidates,
)
from meshnat.punch.results import PathOpened, Punched
from meshnat.punch.udp import punch_udp, punch_udp_many
from meshnat.traversal import PairState, TraversalService
from meshnat.traversal.budget import SendBudget, tcp_dial_bytes
from meshnat.traversal.pairs import PortPair
from meshnat.traversal.scope import admit_candidates, peer_scopes
from meshnat.traversal.session import Traversal
from meshnat.traversal.sources import direct_ips, own_endpoints, peer_ips

log = logging.getLogger(__name__)


class PathRace:
    """Races the UDP and TCP paths of punches whose Offers and Sync are done."""

    def __init__(self, traversals: TraversalService) -> None:
        """`traversals`: the service the UDP path adopts its traversal from."""
        self._traversals = traversals
        self.unproven_bytes = self.withheld = self.paid = 0  # the budgets', over every race
        self.refused_candidates = 0  # candidates out of the peer's scope (traversal.scope)

    async def run(self, node: MeshNode, peer: ID, ours: Offer, theirs: Offer, plan: PunchPlan,
                  *, rtt: float, started: float, budget: SendBudget) -> Punched:
        """Punch the paths `plan` names at once; the first direct connection wins, the other
        is cancelled. `budget`: what the peer's coordination paid for, shared by both paths.
        Candidates the peer may not name (`traversal.scope`) are dropped first."""
        theirs = self._admit(node, peer, theirs)
        for ip in direct_ips(node, peer):
            budget.prove(ip)
        try:
            return await self._race_paths(node, peer, ours, theirs, plan, rtt, started, budget)
        finally:
            stats = budget.statistics()
            self.unproven_bytes += stats.unproven_bytes
            self.withheld += stats.withheld
            self.paid += stats.paid

    def _admit(self, node: MeshNode, peer: ID, theirs: Offer) -> Offer:
        scopes, own = peer_scopes(peer_ips(node, peer)), own_endpoints(node)
        udp, refused_udp = admit_candidates(theirs.udp, scopes, own)
        tcp, refused_tcp = admit_candidates(theirs.tcp, scopes, own)
        if refused_udp or refused_tcp:
            self.refused_candidates += refused_udp + refused_tcp
            log.debug("punch with %s: %d candidates refused (scope)", peer,
                      refused_udp + refused_tcp)
        return dataclasses.replace(theirs, udp=udp, tcp=tcp)

    async def _race_paths(self, node: MeshNode, peer: ID, ours: Offer, theirs: Offer,
                          plan: PunchPlan, rtt: float, started: float,
                          budget: SendBudget) -> Punched:
        won: list[Punched] = []
        failures: list[PunchFailed] = []
        udp_heard, udp_done = trio.Event(), trio.Event()
        udp_runs = plan.udp is not None and bool(theirs.udp)
        before = direct_now(node, peer)  # taken before any probe: the outcome comes after

        async def attempt(path: str, label: str) -> None:
            """`path`: "birthday", "traversal" or "tcp"; `label` names it in failures."""
            opened: PathOpened | None = None
            try:
                if path == "tcp" and plan.tcp_after_udp and udp_runs:
                    with trio.move_on_after(tcp_grace(rtt)):
                        await udp_heard.wait()
                    if udp_heard.is_set():  # UDP works: TCP only if its connection fails
                        await udp_done.wait()
                with trio.move_on_after(plan.backstop):  # its own deadline should end it first
                    if path == "birthday":
                        opened = await self._birthday(node, peer, ours, theirs, plan, budget)
                    elif path == "traversal":
                        opened = await self._traversal(node, peer, ours, theirs, plan, budget,
                                                       udp_heard, before)
                    else:
                        opened = await self._tcp(node, peer, theirs, plan, budget, before)
            except PunchFailed as exc:
                failures.append(PunchFailed(f"{label}: {exc.reason}",
                                            probes_sent=exc.probes_sent))
                return
            except MeshNatError as exc:
                failures.append(PunchFailed(f"{label}: {exc}"))
                return
            if opened is None:
                failures.append(PunchFailed(f"{label}: timed out"))
                return
            if not won:
                won.append(Punched(peer, "tcp" if path == "tcp" else "udp", opened.local,
                                   opened.remote, rtt, trio.current_time() - started,
                                   opened.probes_sent, opened.connection))
                nursery.cancel_scope.cancel()
            elif opened.connection is not won[0].connection:  # both made it: keep the winner
                with trio.CancelScope(shield=True):
                    await opened.connection.close()

        async def attempt_udp() -> None:
            """The UDP paths side by side: birthday probing (IPv4) beside a traversal of the
            families the plan names (IPv6, or both when there is no birthday probing)."""
            try:
                async with trio.open_nursery() as paths:
                    if plan.birthday is not None:
                        paths.start_soon(attempt, "birthday", "udp")
                    if plan.traversal_versions:
                        label = "udp" if plan.birthday is None else "udp (IPv6 traversal)"
                        paths.start_soon(attempt, "traversal", label)
            finally:
                udp_done.set()

        async with trio.open_nursery() as nursery:
            if udp_runs:
                nursery.start_soon(attempt_udp)
            if plan.tcp is not None and theirs.tcp:
                nursery.start_soon(attempt, "tcp", "tcp")
        if won:
            return won[0]
        reasons = "; ".join(f.reason for f in failures) or "no path attempted"
        raise PunchFailed(reasons, probes_sent=sum(f.probes_sent for f in failures),
                          candidates=tuple(map(str, theirs.udp + theirs.tcp)))

    async def _birthday(self, node: MeshNode, peer: ID, ours: Offer, theirs: Offer,
                        plan: PunchPlan, budget: SendBudget) -> PathOpened:
        assert plan.birthday is not None
        side = self._birthday_hard if plan.udp is UdpPath.BIRTHDAY_HARD else \
            self._birthday_easy
        return await side(node, peer, ours.txid, theirs, plan.birthday, plan.path_timeout,
                          budget)

    async def _traversal(self, node: MeshNode, peer: ID, ours: Offer, theirs: Offer,
                         plan: PunchPlan, budget: SendBudget, heard: trio.Event,
                         before: list[INetConn]) -> PathOpened:
        """`heard` is set once the traversal heard the peer (the TCP path may wait on it);
        `before`: the direct connections open before the punch, never its outcome."""
        local = node.listen_endpoint("udp")
        # the punch's Offers were the traversal's candidate exchange, and Sync started both
        # sides together: each adopts the traversal under the punch's txid, probing the
        # candidates of the families the plan names at once (the first live pair is taken)
        candidates = traversal_candidates(theirs.udp, plan.traversal_versions)
        if not candidates:
            raise PunchFailed("no UDP candidate of a family to traverse")
        traversal = await self._traversals.adopt(ours.txid, peer, candidates, budget=budget,
                                                 shared=True, dial_early=plan.traversal_dials)
        try:
            if not plan.traversal_dials:  # the initiator takes a pair and dials; we accept
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._signal_heard, traversal.id, heard, plan.path_timeout)
                    conn = await _libp2p.wait_direct_connection(node.host, peer,
                                                                besides=before)
                    nursery.cancel_scope.cancel()
                remote = _libp2p.connection_remote(conn)
                if remote is not None:
                    local = node.listen_endpoint("udp", remote.ip.version)
                return PathOpened(local, remote or local, 0, conn)
            # the peer's first probe is enough to dial (it came from where QUIC goes), and an
            # early dial that connected is the path (the peer's probes may all have been lost)
            found = await self._heard_or_early(traversal, plan.path_timeout)
            if found is None:
                raise PunchFailed(f"no UDP pair answered within {plan.path_timeout} s",
                                  probes_sent=traversal.probes_sent)
            heard.set()
            if not isinstance(found, PortPair):
                assert traversal.early is not None
                local = node.listen_endpoint("udp", traversal.early.remote.ip.version)
                return PathOpened(local, traversal.early.remote, traversal.probes_sent, found)
            pair = found
            await self._traversals.take(pair.id, initiate=True, on_heard=True, tell_peer=False)
            conn = await self._traversals.connect(pair.id)
            local = node.listen_endpoint("udp", pair.remote.ip.version)
            return PathOpened(Endpoint(local.ip, pair.local_port), pair.remote,
                              traversal.probes_sent, conn)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(UnknownPair):
                await self._traversals.close(traversal.id)  # its connection stays

    async def _heard_or_early(self, traversal: Traversal,
                              timeout: float) -> PortPair | INetConn | None:
        """The first pair the peer was heard on (or alive), or the early dial's connection
        if it is up first; None when neither came within `timeout` seconds."""
        found: list[PortPair | INetConn] = []
        async with trio.open_nursery() as nursery:
            async def heard() -> None:
                with contextlib.suppress(PeerTimeout):
                    found.append(await self._traversals.wait_for(
                        traversal.id, PairState.ALIVE, timeout, or_heard=True))
                nursery.cancel_scope.cancel()

            async def early() -> None:
                while traversal.early is None:  # set once the driver made the dial
                    await traversal.changed.wait()
                await traversal.early.done.wait()
                if traversal.early.connection is not None:
                    found.append(traversal.early.connection)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(heard)
            nursery.start_soon(early)
        return found[0] if found else None

    async def _signal_heard(self, traversal_id: str, heard: trio.Event, timeout: float) -> None:
        """Set `heard` once the traversal heard the peer (within `timeout` seconds)."""
        with contextlib.suppress(PeerTimeout, UnknownPair):
            await self._traversals.wait_for(traversal_id, PairState.ALIVE, timeout,
                                            or_heard=True)
            heard.set()

    @staticmethod
    async def _birthday_hard(node: MeshNode, peer: ID, txid: bytes, theirs: Offer,
                             birthday: Birthday, timeout: float,
                             budget: SendBudget) -> PathOpened:
        """Open many mappings towards the easy side; dial QUIC from the socket it reached.
        Sockets and rounds are what the easy side paid for (its IP is unproven until then)."""
        # only the easy side's public IPv4 endpoint (the first): its LAN addresses cannot be
        # reached from here, and birthday probing is an IPv4 NAT's cure
        target = next((e for e in theirs.udp if e.ip.version == 4), theirs.udp[0])
        sockets = probes_allowed(budget.allowance(target.ip), birthday.wanted)
        if sockets < 1:
            raise PunchFailed("birthday probing: the peer paid for no probes")
        session = HardSideSession(txid, (target,), sockets=sockets,
                                  refresh_interval=birthday.interval, timeout=timeout)
        found = await punch_udp_many(session, sockets, budget)
        source = Endpoint(node.listen_endpoint("udp", target.ip.version).ip, found.port)
        conn = await _libp2p.dial_quic_from(node.host, peer, found.heard.remote, source)
        return PathOpened(source, found.heard.remote, found.heard.probes_sent, conn)

    @staticmethod
    async def _birthday_easy(node: MeshNode, peer: ID, txid: bytes, theirs: Offer,
                             birthday: Birthday, timeout: float,
                             budget: SendBudget) -> PathOpened:
        """Probe random ports of the hard side's IP; it dials back over the port that worked.
        At most as many probes as the hard side paid for (its IP is unproven until then).

        The hard side's new connection is the outcome, its answer heard or not: a probe that
        landed opened our filter to that port, so its dial gets in even when both copies of
        its answer were lost (the session would give up after `timeout` with the connection
        there). A session that gives up leaves half the `BACKSTOP` for a dial that started
        just before (the race's backstop counts from before the session)."""
        ip = next((e for e in theirs.udp if e.ip.version == 4), theirs.udp[0]).ip
        max_probes = probes_allowed(budget.allowance(ip), birthday.wanted)
        if max_probes < 1:
            raise PunchFailed("birthday probing: the peer paid for no probes")
        session = EasySideSession(
            txid, ip, rng=random.SystemRandom(), max_probes=max_probes,
            probes_per_tick=birthday.per_tick, tick=birthday.interval, timeout=timeout)
        gave_up: list[PunchFailed] = []
        # a direct connection open before the punch (a dead punched path the keepalives have
        # not retired yet, say) is not the outcome: the hard side dials a new one
        before = direct_now(node, peer)

        async def probe(done: trio.CancelScope) -> None:
            try:
                await punch_udp(node, session, budget)
            except MeshNatError as exc:
                gave_up.append(exc if isinstance(exc, PunchFailed) else PunchFailed(str(exc)))
                done.deadline = min(done.deadline, trio.current_time() + BACKSTOP / 2)

        with trio.CancelScope() as waiting:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe, waiting)
                conn = await _libp2p.wait_direct_connection(node.host, peer, besides=before)
                nursery.cancel_scope.cancel()
        if waiting.cancelled_caught:
            raise gave_up[0]
        remote = _libp2p.connection_remote(conn) or Endpoint(ip, 0)
        return PathOpened(node.listen_endpoint("udp", ip.version), remote,
                          session.probes_sent, conn)

    @staticmethod
    async def _tcp(node: MeshNode, peer: ID, theirs: Offer, plan: PunchPlan,
                   budget: SendBudget, before: list[INetConn]) -> PathOpened:
        """A public side is simply dialled (by the initiator when both are public); two NATed
        sides open at once from their listen ports, with fixed Noise roles. A dial to an IP
        the peer has not proven costs its SYNs from the budget: few candidates get one.
        Families alternate, IPv6 first (`interleave_families`: no NAT stands in its way),
        each dialled from the listen port of its family; families this node does not listen
        on are skipped."""
        local = node.listen_endpoint("tcp")
        if plan.tcp is TcpPath.ACCEPT:  # they dial us
            conn = await _libp2p.wait_direct_connection(node.host, peer, besides=before)
            return PathOpened(local, theirs.tcp[0], 0, conn)
        errors: list[str] = []
        dialable = (e for e in theirs.tcp if e.ip.version in node.ip_versions)
        for remote in interleave_families(dialable):
            local = node.listen_endpoint("tcp", remote.ip.version)
            proven = budget.is_proven(remote.ip)
            if not budget.spend(remote.ip, tcp_dial_bytes(remote.ip)):
                errors.append(f"{remote}: not proven, its allowance is spent")
                continue
            try:  # one attempt to an unproven IP, as charged (dial_addr retries 3 times)
                conn = await _libp2p.dial_tcp_from(
                    node.host, peer, remote, local,
                    as_responder=plan.tcp is TcpPath.DIAL_AS_RESPONDER, retries=proven)
            except MeshNatError as exc:
                errors.append(str(exc))
                continue
            return PathOpened(local, remote, 0, conn)
        raise PunchFailed("; ".join(errors) or "no TCP candidate")


def direct_now(node: MeshNode, peer: ID) -> list[INetConn]:
    """The direct connections to `peer` open before a punch: never its outcome. One may be a
    dead punched path the keepalives have not retired yet (its NAT binding flushed): taken
    for the new path, the punch would end at once on this side and stop answering probes."""
    return [c for c in node.host.get_network().get_connections(peer)
            if not _libp2p.is_relayed(c)]
