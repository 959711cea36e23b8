"""The exposing side's decisions, without I/O: which services exist, who may use them, and
how many tunnels may be open at once.

`TunnelTable` answers each inbound tunnel in two steps. `acquire(peer, network)` runs when the
stream arrives, before anything is read, so a caller over its limit costs one refusal and
nothing more: a peer that no exposed service allows takes no slot at all, and slots are bounded
per peer id, per source network (IPv4 /24, IPv6 /56: fresh peer ids are free, so one host
could otherwise take every slot) and in total. `authorize(peer, name)` runs on the decoded
request. Every successful `acquire` is paired with one `release(peer, network)` when the stream
ends, whatever happened in between.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from meshnat.config import require_in_range, require_positive
from meshnat.errors import ConfigError, LocalProtocolError
from meshnat.limits import Claim, SlotLimit
from meshnat.tunnel.messages import RefusalCode, check_service_name


class AnyPeer(Enum):
    """The type of `ANY_PEER`."""

    ANY_PEER = "any peer"


ANY_PEER = AnyPeer.ANY_PEER
"""Pass as `allow` to let every authenticated peer use a service (never the default)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelConfig:
    """Limits and timeouts of tunnels, on both the exposing and the forwarding side."""

    max_tunnels: int = 256
    """Inbound tunnels this node serves at once, over all peers and services."""

    max_tunnels_per_peer: int = 32
    """Inbound tunnels one peer may hold open at once."""

    max_tunnels_per_network: int = 64
    """Inbound tunnels peers from one source network (IPv4 /24, IPv6 /56) may hold open at
    once: a quarter of `max_tunnels`, so one network leaves room for three others at least."""

    max_local_connections: int = 256
    """Local connections one `forward()` listener serves at once; more wait to be accepted."""

    open_timeout: float = 10.0
    """Seconds for the open exchange (request in, answer out) on either side."""

    connect_timeout: float = 5.0
    """Seconds the exposing node waits for the target's TCP connection."""

    idle_timeout: float = 300.0
    """Seconds without a byte in either direction before a tunnel is closed."""

    chunk_size: int = 65_507
    """Bytes read at once per direction: the most a tunnel buffers itself in each direction.
    The default fills one Yamux frame inside one Noise message (`_libp2p.FRAME_PAYLOAD`)."""

    def __post_init__(self) -> None:
        require_in_range(self, 1, 1_000_000, "max_tunnels", "max_tunnels_per_peer",
                         "max_tunnels_per_network", "max_local_connections")
        require_in_range(self, 1024, 16 * 1024 * 1024, "chunk_size")
        require_positive(self, "open_timeout", "connect_timeout", "idle_timeout")


@dataclass(frozen=True, slots=True)
class Exposed:
    """A service name mapped to a local TCP target, and who may reach it."""

    name: str
    host: str
    port: int
    allow: frozenset[str] | AnyPeer
    """Peer ids (base58 text) allowed to open tunnels, or ANY_PEER."""

    def __post_init__(self) -> None:
        check_service_name(self.name)
        if type(self.host) is not str or not self.host:
            raise ConfigError(f"target host must be a non-empty string, got {self.host!r}")
        require_in_range(self, 1, 65535, "port")
        if self.allow is not ANY_PEER and (not isinstance(self.allow, frozenset)
                                           or not self.allow):
            raise ConfigError("allow must name at least one peer id, or be ANY_PEER")

    @classmethod
    def create(cls, name: str, target: tuple[str, int],
               allow: Collection[object] | AnyPeer) -> Exposed:
        """Build from user arguments: peer ids may be any objects whose str() is the id."""
        if isinstance(allow, (str, bytes)):
            raise ConfigError("allow must be a collection of peer ids, not one string")
        allowed = allow if allow is ANY_PEER else frozenset(str(p) for p in allow)
        host, port = target
        return cls(name, host, port, allowed)

    def allows(self, peer: str) -> bool:
        return self.allow is ANY_PEER or peer in self.allow


@dataclass(frozen=True, slots=True)
class Refusal:
    """A decision not to open a tunnel: the code sent to the caller and a short reason."""

    code: RefusalCode
    reason: str


@dataclass(frozen=True, slots=True)
class TunnelStatistics:
    """A snapshot of the table (trio-style `statistics()`)."""

    services: int
    active: int
    peers: int
    authorized: int
    """Requests that named a service the caller may use (the target may still refuse)."""
    refused: int


class TunnelTable:
    """Exposed services plus the open-tunnel counters the limits are checked against."""

    def __init__(self, config: TunnelConfig) -> None:
        self.config = config
        self._services: dict[str, Exposed] = {}
        self._slots = SlotLimit(total=config.max_tunnels,
                                per_peer=min(config.max_tunnels_per_peer, config.max_tunnels),
                                per_network=min(config.max_tunnels_per_network,
                                                config.max_tunnels))
        self._peers: set[str] = set()
        self._authorized = self._refused = 0

    def expose(self, exposed: Exposed) -> None:
        """Add or replace a service; tunnels already open keep their target."""
        self._services[exposed.name] = exposed

    def withdraw(self, name: str) -> None:
        """Remove a service; raises LocalProtocolError if it is not exposed."""
        if self._services.pop(name, None) is None:
            raise LocalProtocolError(f"service {name!r} is not exposed")

    def services(self) -> tuple[str, ...]:
        """The exposed service names, sorted."""
        return tuple(sorted(self._services))

    def acquire(self, peer: str, network: str) -> Refusal | None:
        """Take a tunnel slot for `peer` from `network` as its stream arrives; a Refusal if no
        exposed service allows `peer` (it takes no slot) or a limit is reached."""
        if not any(exposed.allows(peer) for exposed in self._services.values()):
            return self._refuse(RefusalCode.NOT_ALLOWED, "no service here allows you")
        if self._slots.acquire(peer, network) is not None:
            self._peers.add(peer)
            return None
        config = self.config
        if self._slots.last_refusal == "total":
            return self._refuse(RefusalCode.NODE_LIMIT,
                                f"this node serves {config.max_tunnels} tunnels already")
        if self._slots.last_refusal == "network":
            return self._refuse(RefusalCode.PEER_LIMIT,  # the caller's network is the caller
                                f"your network holds {self._slots.per_network} tunnels "
                                f"already, the limit")
        return self._refuse(RefusalCode.PEER_LIMIT,
                            f"you hold {self._slots.per_peer} tunnels already, the limit")

    def release(self, peer: str, network: str) -> None:
        """Give back the slot of one successful `acquire(peer, network)`."""
        if self._slots.held_by_peer(peer) <= 0 or self._slots.held_by_network(network) <= 0:
            raise LocalProtocolError(f"release without acquire for {peer}")
        self._slots.release(Claim(peer, network))
        if self._slots.held_by_peer(peer) == 0:
            self._peers.discard(peer)

    def authorize(self, peer: str, name: str) -> Exposed | Refusal:
        """The service `peer` may tunnel to under `name`, or why not."""
        exposed = self._services.get(name)
        if exposed is None:
            return self._refuse(RefusalCode.UNKNOWN_SERVICE, f"no service named {name!r}")
        if not exposed.allows(peer):
            return self._refuse(RefusalCode.NOT_ALLOWED,
                                f"peer {peer} may not use service {name!r}")
        self._authorized += 1
        return exposed

    def refused(self, code: RefusalCode, reason: str) -> Refusal:
        """Record a refusal decided by the adapter (target down, bad request)."""
        return self._refuse(code, reason)

    def statistics(self) -> TunnelStatistics:
        return TunnelStatistics(len(self._services), self._slots.held,
                                len(self._peers), self._authorized, self._refused)

    def _refuse(self, code: RefusalCode, reason: str) -> Refusal:
        self._refused += 1
        return Refusal(code, reason)
