"""`RendezvousClient`: register this node's signed record under a network name, find others."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import trio

from meshnat._libp2p import PeerInfo
from meshnat.bound import NodeBound
from meshnat.config import require_in_range, require_positive
from meshnat.errors import (
    ConfigError,
    MalformedMessage,
    MeshNatError,
    RemoteProtocolError,
)
from meshnat.exchange import request
from meshnat.records import AddressRecord, RecordAuthority, verify_record
from meshnat.rendezvous.messages import (
    Discover,
    Discovered,
    Register,
    Registered,
    Unregister,
    check_namespace,
)
from meshnat.rendezvous.service import RENDEZVOUS_PROTOCOL
from meshnat.wire import new_txid

log = logging.getLogger(__name__)

A = TypeVar("A", Registered, Discovered)


@dataclass(frozen=True, slots=True, kw_only=True)
class RendezvousClientConfig:
    """How RendezvousClient talks to rendezvous points."""

    timeout: float = 10.0
    """Seconds for one request (connecting included)."""

    max_pages: int = 16
    """Discovered pages read per lookup at most (16 records or 4 KiB each)."""

    retry_interval: float = 2.0
    """Seconds before `keep_registered` tries again after a failure; doubles up to 32x."""

    def __post_init__(self) -> None:
        require_positive(self, "timeout", "retry_interval")
        require_in_range(self, 1, 1024, "max_pages")


@dataclass(frozen=True, slots=True)
class RendezvousStatistics:
    registered: int
    """Successful registrations (refreshes included)."""
    rejected: int
    """Records a rendezvous point returned that failed verification (never used)."""


def _namespace(namespace: str) -> str:
    try:
        return check_namespace(namespace)
    except MalformedMessage as exc:
        raise ConfigError(str(exc)) from None


class RendezvousClient(NodeBound):
    """Publishes the record of `authority` at rendezvous points and reads others' records."""

    def __init__(self, authority: RecordAuthority,
                 config: RendezvousClientConfig | None = None) -> None:
        self.config = config or RendezvousClientConfig()
        self.authority = authority
        self._registered = self._rejected = 0

    def statistics(self) -> RendezvousStatistics:
        return RendezvousStatistics(self._registered, self._rejected)

    async def register(self, rendezvous: PeerInfo, namespace: str) -> int:
        """Register the current record under `namespace`; returns the TTL granted (seconds).

        Raises ConfigError (bad namespace), PeerRefused (e.g. `invalid-record`,
        `rate-limited`), PeerUnavailable or PeerTimeout.
        """
        signed = self.authority.current()
        left = int(signed.record.expires_at - time.time())
        request = Register(new_txid(), _namespace(namespace), signed.data, max(1, left))
        answer = await self._request(rendezvous, request, Registered)
        self._registered += 1
        log.info("rendezvous: registered seq=%d in %r for %ds", signed.record.seq, namespace,
                 answer.ttl)
        return answer.ttl

    async def unregister(self, rendezvous: PeerInfo, namespace: str) -> None:
        await self._request(rendezvous, Unregister(new_txid(), _namespace(namespace)), Registered)

    async def discover(self, rendezvous: PeerInfo, namespace: str) -> list[AddressRecord]:
        """Every verified record under `namespace` (this node's own included).

        Records that fail verification are skipped and counted (`statistics().rejected`).
        """
        namespace, cookie, found = _namespace(namespace), b"", []
        for _ in range(self.config.max_pages):
            page = await self._request(rendezvous, Discover(new_txid(), namespace, cookie),
                                       Discovered)
            for data in page.records:
                try:
                    found.append(verify_record(data, now=time.time()))
                except RemoteProtocolError as exc:
                    self._rejected += 1
                    log.debug("rendezvous: skipped a record from %s: %s",
                              rendezvous.peer_id, exc)
            if not page.cookie or page.cookie == cookie:
                break
            cookie = page.cookie
        return found

    async def keep_registered(self, rendezvous: PeerInfo, namespace: str) -> NoReturn:
        """Stay registered until cancelled: again when the record changes or half the granted
        TTL has passed, retrying failures with a doubling delay (the rendezvous may be gone)."""
        failures = 0
        while True:
            seq = self.authority.current().record.seq
            try:
                granted = await self.register(rendezvous, namespace)
            except MeshNatError as exc:
                failures += 1
                wait = self.config.retry_interval * 2 ** min(failures - 1, 5)
                log.info("rendezvous: registration failed (%s); again in %.0fs", exc, wait)
            else:
                failures, wait = 0, granted / 2
            with trio.move_on_after(wait):
                await self.authority.wait_newer(seq)

    async def _request(self, rendezvous: PeerInfo,
                       message: Register | Discover | Unregister, expected: type[A]) -> A:
        return await request(self.node, rendezvous, RENDEZVOUS_PROTOCOL, message, expected,
                             timeout=self.config.timeout)
