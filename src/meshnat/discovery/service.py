"""`PeerAddressDiscovery`: ask several reflectors at once, decide by majority, report events."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from meshnat._libp2p import PeerInfo, TaskStatus, endpoint_of
from meshnat.config import require_in_range, require_positive
from meshnat.discovery.consensus import Consensus, Observation, conclude
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ConfigError,
    MeshNatError,
    NoConsensus,
    NotMounted,
)
from meshnat.events import AddressConfirmed, AddressDisputed, EventSink, ignore_events
from meshnat.node import MeshNode
from meshnat.reflection.client import Reflection, observe_over_stream, observe_over_udp

log = logging.getLogger(__name__)

TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryConfig:
    """How PeerAddressDiscovery asks reflectors and what it believes."""

    min_responses: int = 3
    """Answers needed before any decision; fewer raise InsufficientResponses."""

    max_reflectors: int = 16
    """Reflectors asked per round (the first ones given); bounds each round's fan-out."""

    timeout: float = 3.0
    """Seconds for a whole round; reflectors silent by then count as absent."""

    group_by_network: bool = True
    """One vote per IPv4 address or IPv6 /56. Turn off only where every reflector shares one
    address on purpose (loopback tests); then each peer id votes."""

    interval: float = 0.0
    """Seconds between background rediscoveries while mounted; 0 disables them."""

    transports: tuple[str, ...] = TRANSPORTS
    """Transports rediscovered in the background."""

    def __post_init__(self) -> None:
        require_in_range(self, 1, 1024, "min_responses", "max_reflectors")
        if self.max_reflectors < self.min_responses:
            raise ConfigError("max_reflectors must be >= min_responses")
        require_positive(self, "timeout")
        if self.interval < 0 or not math.isfinite(self.interval):
            raise ConfigError(f"interval must be >= 0, got {self.interval!r}")
        if not set(self.transports) <= set(TRANSPORTS):
            raise ConfigError(f"transports must be among {TRANSPORTS}, got {self.transports!r}")


def _reflector_endpoint(peer: PeerInfo, transport: str, version: int | None = None
                        ) -> Endpoint | None:
    """The reflector's `transport` endpoint of IP `version`; None: of any, IPv4 first."""
    found = [parsed[1] for addr in peer.addrs
             if (parsed := endpoint_of(addr)) is not None and parsed[0] == transport
             and (version is None or parsed[1].ip.version == version)]
    return min(found, key=lambda e: e.ip.version) if found else None


class PeerAddressDiscovery:
    """Learns this node's public endpoint per transport from mesh reflectors.

    `udp` is the mapping of the node's UDP (QUIC) port, learned by datagram; `tcp` the mapping
    of TCP connections dialled from the TCP listen port. Never guesses: with too few answers or
    no strict majority it raises instead.

    Per IP family (`version`, 4 by default): a dual-stack node asks its reflectors' IPv6
    endpoints from its IPv6 sockets for the IPv6 mapping (normally its own address: no NAT66),
    votes grouped per /56. The background loop does both families the node listens on.
    """

    def __init__(self, reflectors: Sequence[PeerInfo], config: DiscoveryConfig | None = None, *,
                 events: EventSink = ignore_events) -> None:
        self.config = config or DiscoveryConfig()
        self.reflectors = list(reflectors)
        self._events = events
        self._node: MeshNode | None = None
        self._latest: dict[tuple[str, int], Consensus] = {}
        self._last_round: dict[tuple[str, int], Consensus] = {}
        self._wake = trio.Event()

    def latest(self, transport: str = "udp", version: int = 4) -> Consensus | None:
        """The last successful round for `transport` over IP `version`; None means the
        address is unknown (never agreed on, or a later round showed a port per reflector:
        a mapping that depends on the destination is no address)."""
        return self._latest.get((transport, version))

    def last_round(self, transport: str = "udp", version: int = 4) -> Consensus | None:
        """The last round that got enough answers, agreed or not (its `ip` may be known
        even when no port won, as behind an endpoint-dependent NAT)."""
        return self._last_round.get((transport, version))

    def network_changed(self) -> None:
        """Ask the background loop to rediscover now (after an interface or route change)."""
        self._wake.set()

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        self._node = node
        if not self.reflectors:
            # INFO, not WARNING: a mesh starts its discovery empty and gives it reflectors later
            log.info("discovery: no reflectors yet; the public address stays unknown until"
                     " some are given")
        try:
            task_status.started()
            while True:
                if self.config.interval and self.reflectors:
                    for version in sorted(node.ip_versions):
                        for transport in self.config.transports:
                            try:
                                await self.discover(transport, version=version)
                            except MeshNatError as exc:
                                log.info("discovery: %s/IPv%d round failed: %s", transport,
                                         version, exc)
                with trio.move_on_after(self.config.interval or math.inf):
                    await self._wake.wait()
                self._wake = trio.Event()
        finally:
            self._node = None

    async def discover(self, transport: str = "udp", *, timeout: float | None = None,
                       version: int = 4) -> Consensus:
        """Ask every reflector concurrently and return the strict-majority Consensus for
        `transport` over IP `version` (reflectors without an address of that family are
        skipped; the node must listen on it).

        Raises InsufficientResponses (fewer than `min_responses` answers, including no
        reflectors at all) or NoConsensus (carrying the tally).
        """
        if transport not in TRANSPORTS:
            raise ConfigError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if self._node is None:
            raise NotMounted("mount PeerAddressDiscovery on a running MeshNode first")
        node, limit = self._node, timeout or self.config.timeout
        if version not in node.ip_versions:
            raise ConfigError(f"the node does not listen on IPv{version}")
        asked = [p for p in self.reflectors if _reflector_endpoint(p, transport, version)]
        if len(asked) < len(self.reflectors):
            log.info("discovery: %d reflectors have no IPv%d %s address and are skipped",
                     len(self.reflectors) - len(asked), version, transport)
        asked = asked[: self.config.max_reflectors]
        observations: list[Observation] = []

        async def ask(peer: PeerInfo) -> None:
            try:
                reflection = await self._ask(node, peer, transport, version, limit)
            except MeshNatError as exc:
                log.debug("discovery: reflector %s gave nothing: %s", peer.peer_id, exc)
                return
            if reflection.transport != transport:
                log.debug("discovery: %s answered over %s", peer.peer_id, reflection.transport)
                return
            observations.append(Observation(
                str(peer.peer_id), self._group(peer, version), reflection.observed,
                reflection.rtt))

        with trio.move_on_after(limit + 0.5):  # backstop; each ask has its own deadline
            async with trio.open_nursery() as nursery:
                for peer in asked:
                    nursery.start_soon(ask, peer)
        try:
            consensus = conclude(transport, observations,
                                 min_responses=self.config.min_responses, asked=len(asked))
        except NoConsensus as exc:
            self._last_round[transport, version] = exc.consensus
            if exc.consensus.endpoint_dependent and self._latest.pop((transport, version),
                                                                     None) is not None:
                # one IP, a port per reflector: the NAT maps per destination, so no earlier
                # (fewer-voter) answer is an address anyone else can reach
                log.info("discovery: %s/IPv%d address forgotten: the mapping depends on the "
                         "destination", transport, version)
            self._events(AddressDisputed(transport, exc.consensus.voters,
                                         exc.consensus.endpoint_dependent))
            raise
        self._last_round[transport, version] = self._latest[transport, version] = consensus
        assert consensus.address is not None  # conclude() raised otherwise
        self._events(AddressConfirmed(transport, consensus.address, consensus.votes,
                                      consensus.voters))
        log.info("discovery: %s address %s votes=%d/%d", transport, consensus.address,
                 consensus.votes, consensus.voters)
        return consensus

    async def _ask(self, node: MeshNode, peer: PeerInfo, transport: str, version: int,
                   timeout: float) -> Reflection:
        if transport == "tcp":
            return await observe_over_stream(node, peer, timeout=timeout, version=version)
        endpoint = _reflector_endpoint(peer, "udp", version)
        assert endpoint is not None  # discover() asks only reflectors that have one
        return await observe_over_udp(node, endpoint, timeout=timeout)

    def _group(self, peer: PeerInfo, version: int) -> str:
        """The observer group of `peer` in a round over IP `version`: its IPv4 address or
        its IPv6 /56 there (so one /56 is one vote however many reflectors it holds)."""
        if not self.config.group_by_network:
            return str(peer.peer_id)
        endpoint = (_reflector_endpoint(peer, "udp", version)
                    or _reflector_endpoint(peer, "tcp", version))
        return endpoint.observer_group() if endpoint else str(peer.peer_id)
