"""`RecordAuthority`: the one object per node that builds and signs its address record.

Everything that publishes the node's record (rendezvous registrations, and later tunnels) takes
it from here, so two publishers can never race with different contents: the authority alone
picks sequence numbers, and it re-signs when the contents change or half the TTL has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
import trio

from meshnat import _libp2p
from meshnat._libp2p import TaskStatus
from meshnat._libp2p.records import MAX_RECORD_ADDRS
from meshnat.config import require_in_range, require_positive
from meshnat.discovery import PeerAddressDiscovery
from meshnat.errors import ConfigError, MalformedMessage, NotMounted
from meshnat.node import MeshNode
from meshnat.records.messages import MAX_MAPPED, MAX_SERVICES, MAX_TTL, check_label
from meshnat.records.record import AddressRecord, NatSummary, SignedRecord, sign_record

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordConfig:
    """What the node says about itself and how often it says it again."""

    ttl: int = 600
    """Seconds each signed record holds; it is re-signed once half of it has passed."""

    check_interval: float = 5.0
    """Seconds between looks at discovery's confirmed addresses (a change is signed at once)."""

    name: str | None = None
    """Display name put in the record (printable, at most 64 characters)."""

    publish_local: bool = False
    """Also publish the node's own interface addresses: for peers on one LAN (or loopback).
    Off by default: a private address means nothing to the rest of the mesh."""

    def __post_init__(self) -> None:
        require_in_range(self, 2, MAX_TTL, "ttl")
        require_positive(self, "check_interval")
        if self.name is not None:
            try:
                check_label(self.name, "name")
            except MalformedMessage as exc:
                raise ConfigError(str(exc)) from None


def endpoint_addr(transport: str, ip: str, port: int) -> multiaddr.Multiaddr:
    """The multiaddr of a confirmed public endpoint: TCP, or QUIC on the UDP port."""
    proto = "ip6" if ":" in ip else "ip4"
    tail = f"tcp/{port}" if transport == "tcp" else f"udp/{port}/quic-v1"
    return multiaddr.Multiaddr(f"/{proto}/{ip}/{tail}")


class RecordAuthority:
    """Builds, signs and refreshes this node's `AddressRecord` while mounted.

    Sources: the confirmed public addresses of `discovery` (per transport), the relay circuit
    addresses, the NAT summary and the service names set on it. `current()` is always a record
    with at least half of its TTL left.
    """

    def __init__(self, config: RecordConfig | None = None, *,
                 discovery: PeerAddressDiscovery | None = None) -> None:
        self.config = config or RecordConfig()
        self._discovery = discovery
        self._node: MeshNode | None = None
        self._relay_addrs: tuple[multiaddr.Multiaddr, ...] = ()
        self._mapped_addrs: tuple[multiaddr.Multiaddr, ...] = ()
        self._nat = NatSummary()
        self._services: tuple[str, ...] = ()
        self._current: SignedRecord | None = None
        self._last_seq = 0
        self._changed = trio.Event()

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        self._node = node
        try:
            self.update()
            task_status.started()
            while True:
                await trio.sleep(self.config.check_interval)
                self.update()
        finally:
            self._node = None

    def current(self) -> SignedRecord:
        """The node's newest signed record."""
        if self._current is None or self._node is None:
            raise NotMounted("mount RecordAuthority on a running MeshNode first")
        return self._current

    async def wait_newer(self, seq: int) -> SignedRecord:
        """Wait until a record with a sequence number above `seq` is signed."""
        while True:
            changed = self._changed
            if self.current().record.seq > seq:
                return self.current()
            await changed.wait()

    def set_relay_addrs(self, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        """This node's circuit addresses (from `RelayClient.reserve`)."""
        self._relay_addrs = tuple(addrs)
        self._update_if_mounted()

    def set_mapped_addrs(self, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        """This node's router port mappings that a dial-back confirmed (PortMapper); they
        lead the record's addresses."""
        if len(addrs) > MAX_MAPPED:
            raise ConfigError(f"at most {MAX_MAPPED} mapped addresses, got {len(addrs)}")
        self._mapped_addrs = tuple(addrs)
        self._update_if_mounted()

    def set_nat(self, nat: NatSummary) -> None:
        self._nat = nat
        self._update_if_mounted()

    def set_services(self, names: Sequence[str]) -> None:
        """Service names to advertise (at most 16, each 1-64 printable characters)."""
        if len(names) > MAX_SERVICES:
            raise ConfigError(f"at most {MAX_SERVICES} service names, got {len(names)}")
        try:
            self._services = tuple(check_label(n, "a service name") for n in names)
        except MalformedMessage as exc:
            raise ConfigError(str(exc)) from None
        self._update_if_mounted()

    def _update_if_mounted(self) -> None:
        if self._node is not None:
            self.update()

    def _addrs(self) -> tuple[multiaddr.Multiaddr, ...]:
        public: list[multiaddr.Multiaddr] = []
        for version in (4, 6):  # a dual-stack node's confirmed IPv6 endpoints as well
            for transport in ("tcp", "udp"):
                consensus = (self._discovery.latest(transport, version) if self._discovery
                             else None)
                if consensus is not None and consensus.address is not None:
                    address = consensus.address
                    public.append(endpoint_addr(transport, str(address.ip), address.port))
        if self.config.publish_local and self._node is not None:
            local = (_libp2p.listen_parts(a) for a in self._node.addrs)
            public.extend(endpoint_addr(p[0], p[1], p[2]) for p in local if p is not None)
        addrs = tuple(dict.fromkeys((*self._mapped_addrs, *public, *self._relay_addrs)))
        if len(addrs) > MAX_RECORD_ADDRS:
            log.warning("records: %d addresses, only the first %d are published",
                        len(addrs), MAX_RECORD_ADDRS)
        return addrs[:MAX_RECORD_ADDRS]

    def update(self) -> SignedRecord:
        """Re-sign if the contents changed or half the TTL has passed; return the current one."""
        if self._node is None:
            raise NotMounted("mount RecordAuthority on a running MeshNode first")
        now = time.time()  # records expire on the wall clock their readers share
        addrs, current = self._addrs(), self._current
        if current is not None:
            old = current.record
            same = ((old.addrs, old.nat, old.services, old.mapped)
                    == (addrs, self._nat, self._services, len(self._mapped_addrs)))
            if same and now < old.issued_at + old.ttl / 2:
                return current
        # Sequence numbers are microsecond timestamps: they keep growing across restarts too.
        seq = max(self._last_seq + 1, time.time_ns() // 1000)
        record = AddressRecord(peer_id=self._node.peer_id, seq=seq, addrs=addrs,
                               issued_at=int(now), ttl=self.config.ttl, nat=self._nat,
                               services=self._services, name=self.config.name,
                               mapped=len(self._mapped_addrs))
        self._current, self._last_seq = sign_record(self._node.host.get_private_key(), record), seq
        self._changed.set()
        self._changed = trio.Event()
        log.info("records: signed seq=%d addrs=%s", seq, [str(a) for a in addrs])
        return self._current
