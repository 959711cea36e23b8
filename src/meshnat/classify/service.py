"""`NatClassifier`: runs a probe plan through mesh reflectors and folds it into a NatReport."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

import trio

from meshnat import _libp2p
from meshnat._libp2p import PeerInfo, endpoint_of
from meshnat.bound import NodeBound
from meshnat.classify.classifier import (
    MappingObservation,
    classify_filtering,
    classify_mapping,
    classify_port_allocation,
)
from meshnat.classify.helper import CLASSIFY_PROTOCOL
from meshnat.classify.messages import (
    InfoRequest,
    InfoResponse,
    ProbeAck,
    ProbeDatagram,
    ProbeRequest,
)
from meshnat.classify.plan import ProbePlan, ReflectorPorts, make_probe_plan
from meshnat.classify.report import Evidence, NatReport
from meshnat.config import require_in_range, require_positive
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError, InsufficientResponses, MeshNatError
from meshnat.exchange import request
from meshnat.node import MeshNode
from meshnat.reflection.client import observe_over_udp
from meshnat.wire import Message, encode, frame_datagram, new_txid

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassifierConfig:
    """How NatClassifier probes."""

    query_timeout: float = 1.0
    """Seconds for one observe query (with retransmissions) or one stream request."""

    probe_wait: float = 0.3
    """Seconds to wait for an unsolicited probe or a hairpinned datagram, on top of twice the
    round trip its request took (the probe is sent before the request is acknowledged)."""

    max_reflectors: int = 8
    """Reflectors asked for their second port; the plan uses at most two."""

    def __post_init__(self) -> None:
        require_positive(self, "query_timeout", "probe_wait")
        require_in_range(self, 1, 64, "max_reflectors")


class NatClassifier(NodeBound):
    """Classifies this node's UDP NAT (RFC 4787) with mesh reflectors only, per IP family.

    Reflectors should mount ReflectionService and ProbeHelperService (`meshnat reflector`
    does); two of them on distinct IPs (IPv6: distinct /56s are not needed, distinct
    addresses are) are needed for a full report. Over IPv6 the same tests run through the
    reflectors' IPv6 addresses: a global address behind a stateful firewall is reported
    `behind_nat=False` with its filtering (RFC 4787 §5), a NAT66 as any NAT.
    """

    def __init__(self, reflectors: Sequence[PeerInfo], config: ClassifierConfig | None = None
                 ) -> None:
        self.config = config or ClassifierConfig()
        self.reflectors = list(reflectors)

    async def classify(self, version: int | None = None) -> NatReport:
        """Run every test the reflectors allow over IP `version` (default: the node's first
        family, IPv4 on a dual-stack node); facts that could not be measured stay None.

        Raises InsufficientResponses when no reflector of that family could be reached,
        ConfigError when the node does not listen on it.
        """
        node = self.node
        version = version if version is not None else min(node.ip_versions)
        if version not in node.ip_versions:
            raise ConfigError(f"the node does not listen on IPv{version}")
        run = _Run(node, self.config, version)
        return await run.execute(self.reflectors[: self.config.max_reflectors])

    async def classify_families(self) -> dict[int, NatReport]:
        """One report per IP family the node listens on (IPv4 first); a family no reflector
        answered in is left out (InsufficientResponses only when none answered at all)."""
        reports: dict[int, NatReport] = {}
        last: InsufficientResponses | None = None
        for version in sorted(self.node.ip_versions):
            try:
                reports[version] = await self.classify(version)
            except InsufficientResponses as exc:
                last = exc
        if not reports and last is not None:
            raise last
        return reports


async def dial_back(node: MeshNode, peer: PeerInfo, target: Endpoint,
                    config: ClassifierConfig | None = None) -> bool | None:
    """Ask `peer` (a ProbeHelperService) to send a datagram from a fresh port to `target`, one
    of this node's own public endpoints (the helper refuses any other IP): None if it would
    not, else whether the datagram reached this node's UDP socket through the NAT (a port
    mapping or a forwarded port that really works)."""
    run = _Run(node, config or ClassifierConfig(), target.ip.version)
    return await run.unsolicited(peer, target, "dial-back")


class _Run:
    """One classification: the probes in RFC 5780 order, with their evidence."""

    def __init__(self, node: MeshNode, config: ClassifierConfig, version: int = 4) -> None:
        self.node, self.config, self.version = node, config, version
        self.evidence: list[Evidence] = []
        self.local = node.listen_endpoint("udp", version)
        self.started = trio.current_time()

    def local_endpoints(self) -> list[Endpoint]:
        """The node's concrete UDP endpoints of this run's family."""
        return [e for e in self.node.local_endpoints("udp") if e.ip.version == self.version]

    def note(self, test: str, target: str, result: str, since: float) -> None:
        self.evidence.append(Evidence(test, target, result, (trio.current_time() - since) * 1e3))

    async def execute(self, reflectors: Sequence[PeerInfo]) -> NatReport:
        ports = await self.reflector_ports(reflectors)
        plan = make_probe_plan(ports)
        if plan is None:
            raise InsufficientResponses(0, 1, len(reflectors))
        first = await self.first_mapping(ports)
        local_eps = self.local_endpoints()
        if first is None:
            reachable = any(p.alt is not None for p in ports)  # streams worked, UDP did not
            return self.report(plan, udp_blocked=True if reachable else None)
        mapped, first_dest = first
        behind_nat = mapped not in local_eps
        if first_dest != plan.a.primary:  # A did not answer over UDP: B-first plan is moot
            plan = ProbePlan(next(p for p in ports if p.primary == first_dest), None, None,
                             (*plan.notes, "first reflector gave no UDP answer"))
        from_same_ip, from_other_ip = await self.filtering(plan, mapped, reflectors)
        observations = [MappingObservation(first_dest, mapped)]
        for destination in plan.mapping_destinations():
            seen = await self.observe(destination, "mapping")
            if seen is not None:
                observations.append(MappingObservation(destination, seen))
        allocation, delta = classify_port_allocation(
            self.local.port, [o.mapped.port for o in observations])
        hairpin = await self.hairpin(mapped) if behind_nat else None
        public = tuple(dict.fromkeys(o.mapped for o in observations))
        return self.report(
            plan, udp_blocked=False, behind_nat=behind_nat,
            mapping=classify_mapping(observations),
            filtering=classify_filtering(from_same_ip, from_other_ip),
            port_allocation=allocation, port_delta=delta, hairpin=hairpin, public_addrs=public)

    def report(self, plan: ProbePlan | None, **facts: object) -> NatReport:
        local = next(iter(self.local_endpoints()), self.local)
        notes = plan.notes if plan else ()
        elapsed = trio.current_time() - self.started
        report = NatReport(local=local, version=self.version, evidence=tuple(self.evidence),
                           notes=notes, elapsed=elapsed, **facts)  # type: ignore[arg-type]
        log.info("classify: %s (%.0f ms)", report, elapsed * 1e3)
        return report

    async def reflector_ports(self, reflectors: Sequence[PeerInfo]) -> list[ReflectorPorts]:
        """Each reflector's primary UDP endpoint and, if it says, its second port."""
        found: dict[int, ReflectorPorts] = {}

        async def ask(index: int, peer: PeerInfo) -> None:
            primary = next((p[1] for a in peer.addrs if (p := endpoint_of(a))
                            and p[0] == "udp" and p[1].ip.version == self.version), None)
            if primary is None:
                return
            since = trio.current_time()
            try:
                info = await self.request(peer, InfoRequest(new_txid()), InfoResponse)
                alt: Endpoint | None = Endpoint(primary.ip, info.alt_port)
            except MeshNatError as exc:
                log.debug("classify: %s has no probe helper: %s", peer.peer_id, exc)
                alt = None
            self.note("info", f"…{str(peer.peer_id)[-6:]}", f"alt {alt}" if alt else "no helper",
                      since)
            found[index] = ReflectorPorts(str(peer.peer_id), primary, alt)

        async with trio.open_nursery() as nursery:
            for index, peer in enumerate(reflectors):
                nursery.start_soon(ask, index, peer)
        return [found[i] for i in sorted(found)]

    async def first_mapping(self, ports: Sequence[ReflectorPorts]
                            ) -> tuple[Endpoint, Endpoint] | None:
        """S's mapping seen by A; if A is silent over UDP, by whichever other answers first.

        Only A is asked at first, so that the filtering probes from other IPs stay unsolicited.
        """
        answer = await self.observe(ports[0].primary, "mapping")
        if answer is not None:
            return answer, ports[0].primary
        found: list[tuple[Endpoint, Endpoint]] = []
        async with trio.open_nursery() as nursery:

            async def ask(target: Endpoint) -> None:
                seen = await self.observe(target, "mapping")
                if seen is not None and not found:
                    found.append((seen, target))
                    nursery.cancel_scope.cancel()

            for other in ports[1:3]:
                nursery.start_soon(ask, other.primary)
        return found[0] if found else None

    async def observe(self, destination: Endpoint, test: str) -> Endpoint | None:
        """S's mapping as seen at `destination`, recorded as evidence; None if it is silent."""
        since = trio.current_time()
        try:
            reflection = await observe_over_udp(self.node, destination,
                                                timeout=self.config.query_timeout)
        except MeshNatError:
            self.note(test, str(destination), "no answer", since)
            return None
        self.note(test, str(destination), str(reflection.observed), since)
        return reflection.observed

    async def filtering(self, plan: ProbePlan, mapped: Endpoint, reflectors: Sequence[PeerInfo]
                        ) -> tuple[bool | None, bool | None]:
        """(arrived from A's IP on a new port, arrived from C's IP), before S sends to B or C."""
        peers = {str(p.peer_id): p for p in reflectors}
        results: dict[str, bool | None] = {"same-ip": None, "other-ip": None}

        async def probe(key: str, who: ReflectorPorts) -> None:
            results[key] = await self.unsolicited(peers[who.name], mapped, key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe, "same-ip", plan.a)
            if plan.c is not None:
                nursery.start_soon(probe, "other-ip", plan.c)
        return results["same-ip"], results["other-ip"]

    async def unsolicited(self, peer: PeerInfo, mapped: Endpoint, kind: str) -> bool | None:
        """Ask `peer` to send into `mapped`; None if it would not, else whether it arrived."""
        txid = new_txid()
        since = trio.current_time()
        target = f"…{str(peer.peer_id)[-6:]} {kind} new port"
        with self.watch_for(txid) as arrived:
            try:
                await self.request(peer, ProbeRequest(txid, mapped), ProbeAck)
            except MeshNatError as exc:
                self.note("filtering", target, f"refused: {exc}", since)
                return None
            rtt = trio.current_time() - since
            with trio.move_on_after(self.config.probe_wait + 2 * rtt):
                await arrived.wait()
        self.note("filtering", target, "received" if arrived.is_set() else "not received", since)
        return arrived.is_set()

    async def hairpin(self, mapped: Endpoint) -> bool:
        """Send to our own mapping from S; does the NAT turn it around?"""
        txid = new_txid()
        since = trio.current_time()
        with self.watch_for(txid) as arrived:
            datagram = frame_datagram(encode(ProbeDatagram(txid)))
            with trio.move_on_after(self.config.probe_wait):
                for _ in range(2):  # one loss must not read as "no hairpin"
                    try:
                        await self.node.udp.sendto(datagram, mapped)
                    except OSError as exc:
                        log.debug("classify: hairpin send failed: %s", exc)
                await arrived.wait()
        self.note("hairpin", str(mapped), "received" if arrived.is_set() else "not received",
                  since)
        return arrived.is_set()

    def watch_for(self, txid: bytes) -> AbstractContextManager[_libp2p.Arrival[ProbeDatagram]]:
        """While inside, watch the node's UDP socket for a ProbeDatagram carrying `txid`."""
        return _libp2p.first_datagram(self.node.udp, ProbeDatagram, txid)

    async def request(self, peer: PeerInfo, message: Message, expected: type[M]) -> M:
        """One request/response over a fresh `/meshnat/classify/1.1.0` stream."""
        return await request(self.node, peer, CLASSIFY_PROTOCOL, message, expected,
                             timeout=self.config.query_timeout, version=self.version)
