"""`RendezvousCore`: registrations per namespace, with expiry, limits and paging (pure).

Theory of operation: a registration is (namespace, peer) -> the peer's signed record, its
sequence number and a deadline. The adapter verifies the record's signature before calling
`register`, so the core only sees records that are what they claim; it checks that the peer
registers itself, that a record never goes back in sequence, and the limits. Time is `now`
(monotonic seconds). Expired registrations are dropped whenever their namespace is touched, and
all of them before a limit refuses anything. Pages are ordered by a registration serial number,
which the cookie carries, so a page boundary stays put while others register.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from meshnat.config import require_in_range, require_positive
from meshnat.errors import ConfigError
from meshnat.ratelimit import RateLimiter
from meshnat.rendezvous.messages import (
    COOKIE_SIZE,
    MAX_PAGE,
    Discover,
    Discovered,
    Register,
    Registered,
    Unregister,
)
from meshnat.wire import MAX_MESSAGE_SIZE
from meshnat.wire.error_response import ErrorCode, ErrorResponse

PAGE_BUDGET = MAX_MESSAGE_SIZE - 512
"""Bytes of records per Discovered page, leaving room for the envelope and the cookie."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RendezvousConfig:
    """Limits of a rendezvous point. Defaults suit a public mesh node."""

    max_namespaces: int = 1024
    """Namespaces (network names) held at once."""

    max_per_namespace: int = 256
    """Registrations in one namespace."""

    max_namespaces_per_peer: int = 8
    """Namespaces one peer may be registered in at once."""

    max_per_namespace_per_network: int = 32
    """Registrations in one namespace by peers of one source network (IPv4 /24, IPv6 /56):
    an eighth of a namespace, so fresh identities of one network cannot fill it."""

    max_per_network: int = 256
    """Registrations by peers of one source network over all namespaces."""

    min_ttl: int = 10
    """Shortest registration, seconds (shorter requests are refused: BAD_REQUEST)."""

    max_ttl: int = 7200
    """Longest registration, seconds (longer requests are granted this much)."""

    page_size: int = MAX_PAGE
    """Records per Discovered page at most (pages are also bounded to fit one 4 KiB frame)."""

    request_rate: float = 5.0
    """Requests per second one peer may make (bursts of `request_burst`)."""

    request_burst: int = 20

    stream_timeout: float = 10.0
    """Seconds one request/answer exchange may take."""

    max_concurrent_streams: int = 64
    """Requests served at once; more are reset (load shedding)."""

    max_streams_per_peer: int = 4
    """Requests one peer id may have in flight at once."""

    max_streams_per_network: int = 16
    """Requests the peers of one source network may have in flight at once."""

    def __post_init__(self) -> None:
        require_in_range(self, 1, 1_000_000, "max_namespaces", "max_per_namespace",
                         "max_namespaces_per_peer", "max_concurrent_streams", "request_burst",
                         "max_per_namespace_per_network", "max_per_network")
        require_in_range(self, 1, self.max_concurrent_streams, "max_streams_per_peer",
                         "max_streams_per_network")
        require_in_range(self, 1, 2**31, "min_ttl", "max_ttl")
        require_in_range(self, 1, MAX_PAGE, "page_size")
        require_positive(self, "request_rate", "stream_timeout")
        if self.min_ttl > self.max_ttl:
            raise ConfigError(f"min_ttl {self.min_ttl} exceeds max_ttl {self.max_ttl}")


@dataclass(slots=True)
class _Registration:
    record: bytes
    seq: int
    expires_at: float
    serial: int
    network: str


@dataclass(slots=True)
class _Namespace:
    entries: dict[str, _Registration] = field(default_factory=dict)
    """Peer -> registration, in serial order (a re-registration moves to the end)."""


class RendezvousCore:
    """Answers Register, Discover and Unregister requests; bounded by `RendezvousConfig`."""

    def __init__(self, config: RendezvousConfig | None = None) -> None:
        self.config = config or RendezvousConfig()
        self._namespaces: dict[str, _Namespace] = {}
        self._peer_namespaces: dict[str, set[str]] = {}
        self._network_entries: Counter[str] = Counter()
        self._serial = 0
        self._limiter = RateLimiter(rate=self.config.request_rate,
                                    burst=self.config.request_burst)

    def allow(self, peer: str, now: float) -> bool:
        """Take one request token for `peer` (refuse with RATE_LIMITED when False)."""
        return self._limiter.allow(peer, now)

    def register(self, peer: str, request: Register, *, record_peer: str, record_seq: int,
                 record_left: float, now: float, network: str) -> Registered | ErrorResponse:
        """Register `peer`'s verified record (`record_*` from verification; `record_left` is
        the seconds until the record itself expires, which caps the registration), asked from
        source `network` (`meshnat.limits.network_of`, or a label for relayed requests)."""
        cfg = self.config

        def refuse(code: ErrorCode, reason: str) -> ErrorResponse:
            return ErrorResponse(request.txid, code, reason)

        if record_peer != peer:
            return refuse(ErrorCode.INVALID_RECORD, "a peer may only register its own record")
        if not cfg.min_ttl <= request.ttl:
            return refuse(ErrorCode.BAD_REQUEST, f"ttl must be at least {cfg.min_ttl}s")
        ttl = int(min(request.ttl, cfg.max_ttl, record_left))
        if ttl < 1:
            return refuse(ErrorCode.INVALID_RECORD, "the record expires within a second")
        namespace = self._touch(request.namespace, now)
        existing = namespace.entries.get(peer) if namespace else None
        if existing is not None and record_seq < existing.seq:
            return refuse(ErrorCode.INVALID_RECORD,
                          f"seq {record_seq} is older than the registered {existing.seq}")
        if existing is None:
            if namespace is None and len(self._namespaces) >= cfg.max_namespaces:
                self.expire(now)
                if len(self._namespaces) >= cfg.max_namespaces:
                    return refuse(ErrorCode.UNAVAILABLE, "too many namespaces")
            if namespace is not None and len(namespace.entries) >= cfg.max_per_namespace:
                return refuse(ErrorCode.UNAVAILABLE, "namespace is full")
            if namespace is not None and sum(
                    e.network == network for e in namespace.entries.values()
            ) >= cfg.max_per_namespace_per_network:
                return refuse(ErrorCode.RATE_LIMITED, "your network fills its share of it")
            if len(self._peer_namespaces.get(peer, ())) >= cfg.max_namespaces_per_peer:
                self.expire(now)
                if len(self._peer_namespaces.get(peer, ())) >= cfg.max_namespaces_per_peer:
                    return refuse(ErrorCode.RATE_LIMITED,
                                  f"registered in {cfg.max_namespaces_per_peer} namespaces")
            if self._network_entries[network] >= cfg.max_per_network:
                self.expire(now)
                if self._network_entries[network] >= cfg.max_per_network:
                    return refuse(ErrorCode.RATE_LIMITED, "your network holds its share")
        namespace = self._namespaces.setdefault(request.namespace, _Namespace())
        previous = namespace.entries.pop(peer, None)
        if previous is not None:
            self._uncount(previous)
        self._serial += 1
        namespace.entries[peer] = _Registration(request.record, record_seq, now + ttl,
                                                self._serial, network)
        self._network_entries[network] += 1
        self._peer_namespaces.setdefault(peer, set()).add(request.namespace)
        return Registered(request.txid, ttl)

    def discover(self, request: Discover, now: float) -> Discovered:
        """A page of records registered under the namespace after the cookie's serial."""
        after = int.from_bytes(request.cookie, "big") if request.cookie else 0
        namespace = self._touch(request.namespace, now)
        page: list[bytes] = []
        used, last = 0, 0
        more = False
        for entry in namespace.entries.values() if namespace else ():
            if entry.serial <= after:
                continue
            if len(page) >= self.config.page_size or used + len(entry.record) > PAGE_BUDGET:
                more = True
                break
            page.append(entry.record)
            used, last = used + len(entry.record), entry.serial
        cookie = last.to_bytes(COOKIE_SIZE, "big") if more else b""
        return Discovered(request.txid, tuple(page), cookie)

    def unregister(self, peer: str, request: Unregister, now: float) -> Registered:
        namespace = self._touch(request.namespace, now)
        entry = namespace.entries.pop(peer, None) if namespace is not None else None
        if namespace is not None and entry is not None:
            self._uncount(entry)
            self._forget(peer, request.namespace, namespace)
        return Registered(request.txid, 0)

    def expire(self, now: float) -> int:
        """Drop every expired registration; returns how many were dropped."""
        before = self.registrations()
        for name in list(self._namespaces):
            self._touch(name, now)
        return before - self.registrations()

    def registrations(self) -> int:
        return sum(len(ns.entries) for ns in self._namespaces.values())

    def namespaces(self) -> int:
        return len(self._namespaces)

    def _touch(self, name: str, now: float) -> _Namespace | None:
        """The namespace with its expired registrations dropped (None if it is empty)."""
        namespace = self._namespaces.get(name)
        if namespace is None:
            return None
        for peer in [p for p, e in namespace.entries.items() if e.expires_at <= now]:
            self._uncount(namespace.entries.pop(peer))
            self._forget(peer, name, namespace)
        return self._namespaces.get(name)

    def _uncount(self, entry: _Registration) -> None:
        self._network_entries[entry.network] -= 1
        if self._network_entries[entry.network] <= 0:
            del self._network_entries[entry.network]

    def _forget(self, peer: str, name: str, namespace: _Namespace) -> None:
        peers = self._peer_namespaces.get(peer)
        if peers is not None:
            peers.discard(name)
            if not peers:
                del self._peer_namespaces[peer]
        if not namespace.entries:
            self._namespaces.pop(name, None)
