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

    def __post_init__(self) -> None:
        require_in_range(self, 1, 1_000_000, "max_namespaces", "max_per_namespace",
                         "max_namespaces_per_peer", "max_concurrent_streams", "request_burst")
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
        self._serial = 0
        self._limiter = RateLimiter(rate=self.config.request_rate,
                                    burst=self.config.request_burst)

    def allow(self, peer: str, now: float) -> bool:
        """Take one request token for `peer` (refuse with RATE_LIMITED when False)."""
        return self._limiter.allow(peer, now)

    def register(self, peer: str, request: Register, *, record_peer: str, record_seq: int,
                 record_left: float, now: float) -> Registered | ErrorResponse:
        """Register `peer`'s verified record (`record_*` from verification; `record_left` is
        the seconds until the record itself expires, which caps the registration)."""
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
            if len(self._peer_namespaces.get(peer, ())) >= cfg.max_namespaces_per_peer:
                self.expire(now)
                if len(self._peer_namespaces.get(peer, ())) >= cfg.max_namespaces_per_peer:
                    return refuse(ErrorCode.RATE_LIMITED,
                                  f"registered in {cfg.max_namespaces_per_peer} namespaces")
        namespace = self._namespaces.setdefault(request.namespace, _Namespace())
        namespace.entries.pop(peer, None)
        self._serial += 1
        namespace.entries[peer] = _Registration(request.record, record_seq, now + ttl,
                                                self._serial)
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
        if namespace is not None and namespace.entries.pop(peer, None) is not None:
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
            del namespace.entries[peer]
            self._forget(peer, name, namespace)
        return self._namespaces.get(name)

    def _forget(self, peer: str, name: str, namespace: _Namespace) -> None:
        peers = self._peer_namespaces.get(peer)
        if peers is not None:
            peers.discard(name)
            if not peers:
                del self._peer_namespaces[peer]
        if not namespace.entries:
            self._namespaces.pop(name, None)
