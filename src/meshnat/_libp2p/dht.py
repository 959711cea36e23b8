"""`MeshDHT`: py-libp2p 0.8.1's Kademlia DHT as the mesh uses it, around its pitfalls.

Measured pitfalls (docs/design.md, FACTS) and what this module does about each:

- FIND_NODE refuses keys over 50 bytes that are not multihashes: records are stored under
  `record_key(peer)`, 47 bytes (`/meshnat/` and 19 bytes of SHA-256 of the peer id, in hex).
- A validator whose `select()` raises blocks every later update of that key: the record
  validator's `select` never raises (invalid values simply lose).
- Values are whatever a peer puts: only meshnat address records verify (`verify_record`,
  signed by the key of the peer whose id hashes to the key), the namespace is strict, provider
  records are off, and a server keeps at most `RecordSlots` records per sender peer id, per
  source network and in total, each until it expires.
- Servers add client-mode peers (and any peer that ever opened a KAD stream) to their routing
  tables, and the wire protocol is `/ipfs/kad/1.0.0` whatever the prefix, so unrelated IPFS
  nodes would merge in: a peer joins the routing table only when identify says it is a mesh
  member (`is_member`) in server mode (`SERVER_MARKER`).
- With a small routing table, lookups start from every connected and known peer: they see
  server members only (`_ServersOnly`).
- No refresh follows the first connections: `refresh()` is the caller's to schedule.
- Server mode is switched at run time (`set_server`), announced by an identify push.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.common import PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.tools.anyio_service.context import background_trio_service

from meshnat._libp2p.admission import source_network
from meshnat._libp2p.host import endpoint_of
from meshnat._libp2p.streams import guarded_handler, reset_quietly
from meshnat.errors import InvalidRecord, MeshNatError
from meshnat.records.record import AddressRecord, verify_record
from meshnat.records.slots import RecordSlots

log = logging.getLogger(__name__)

KAD_PROTOCOL = PROTOCOL_ID
"""`/ipfs/kad/1.0.0`: what py-libp2p speaks whatever prefix it is given."""
SERVER_MARKER = TProtocol("/meshnat/dht-server/1.0.0")
"""Registered by DHT servers only, and never opened: the peerstore learns it from identify
alone (py-libp2p also records protocols a peer merely opened a stream for, so a client that
queried a server would look like one by `/ipfs/kad/1.0.0`)."""
NAMESPACE = "meshnat"
KEY_HASH_BYTES = 19
"""`/meshnat/` + 38 hex digits = 47 bytes, under FIND_NODE's 50-byte limit."""
LOOKUP_QUORUM = 3
"""Valid copies a record lookup waits for before it stops asking (py-libp2p's `quorum`;
0 would ask every server the walk finds, ~20 queries per lookup in a 20-node mesh)."""
LOOKUP_TIMEOUT = 30.0
"""Seconds one lookup or refresh may take (py-libp2p bounds each query at 10 s, not the walk)."""

_sender: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("dht_sender")
"""(peer id, source network) of the inbound KAD stream being handled, for `RecordSlots`."""


def stored_protocols(host: IHost, peer: ID) -> list[str]:
    """The protocols identify reported for `peer` ([] for a peer the peerstore never saw)."""
    try:
        return list(host.get_peerstore().get_protocols(peer) or ())
    except Exception:  # py-libp2p's PeerStoreError
        return []


def stored_addrs(host: IHost, peer: ID) -> list[multiaddr.Multiaddr]:
    """The addresses the peerstore holds for `peer` ([] for a peer it never saw), but
    unspecified ones (0.0.0.0, ::): a wildcard listener's identify may list them, and a
    reflector or relay at 0.0.0.0 is this host itself."""
    try:
        addrs = list(host.get_peerstore().addrs(peer))
    except Exception:  # py-libp2p's PeerStoreError
        return []
    return [a for a in addrs if (p := endpoint_of(a)) is None or not p[1].ip.is_unspecified]


def record_key(peer: ID) -> str:
    """The DHT key of `peer`'s address record."""
    digest = hashlib.sha256(peer.to_bytes()).hexdigest()[: 2 * KEY_HASH_BYTES]
    return f"/{NAMESPACE}/{digest}"


def check_record(key: str, value: bytes, now: float) -> AddressRecord:
    """The record `value` if it verifies and belongs under `key`; raises a MeshNatError."""
    record = verify_record(value, now=now)
    if record_key(record.peer_id) != key:
        raise InvalidRecord(f"the record of {record.peer_id} is not stored under its own key")
    return record


class RecordValidator(Validator):
    """Accepts only verified meshnat records under their own key; `select` never raises."""

    def __init__(self, slots: RecordSlots, clock: Callable[[], float] = time.time) -> None:
        self._slots, self._clock = slots, clock

    def validate(self, key: str, value: bytes) -> None:
        now = self._clock()
        record = check_record(key, value, now)
        sender = _sender.get(None)
        if sender is not None and not self._slots.admit(key.encode(), *sender,
                                                        record.expires_at, now):
            raise InvalidRecord(f"record store: the {self._slots.last_refusal} share is held")

    def select(self, key: str, values: list[bytes]) -> int:
        best, best_seq, now = 0, -1, self._clock()
        for index, value in enumerate(values):
            try:
                seq = check_record(key, value, now).seq
            except MeshNatError:
                continue
            if seq > best_seq:
                best, best_seq = index, seq
        return best


class _ServersOnly:
    """The host as the DHT's lookups see it: connected peers and the peerstore's peers limited
    to server members (with fewer than 5 peers in its routing table py-libp2p starts a walk
    from every connected and every known peer, clients and strangers included)."""

    def __init__(self, host: IHost, admit: Callable[[ID], bool]) -> None:
        self._host, self._admit = host, admit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def get_connected_peers(self) -> list[ID]:
        return [p for p in self._host.get_connected_peers() if self._admit(p)]

    def get_peerstore(self) -> Any:
        return _PeerstoreView(self._host.get_peerstore(), self._admit)


class _PeerstoreView:
    def __init__(self, peerstore: Any, admit: Callable[[ID], bool]) -> None:
        self._peerstore, self._admit = peerstore, admit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peerstore, name)

    def peer_ids(self) -> list[ID]:
        return [p for p in self._peerstore.peer_ids() if self._admit(p)]


class MeshDHT:
    """A KadDHT restricted to mesh members and meshnat records; client mode until
    `set_server(True)`. Run it with `async with dht.running():`."""

    def __init__(self, host: IHost, *, is_member: Callable[[ID], bool],
                 slots: RecordSlots | None = None) -> None:
        self._host, self._is_member = host, is_member
        self.slots = slots or RecordSlots()
        validator = NamespacedValidator({NAMESPACE: RecordValidator(self.slots)},
                                        strict_validation=True)
        self._kad = KadDHT(host, DHTMode.CLIENT, validator=validator, validator_changed=True,
                           enable_providers=False, strict_validation=True)
        table = self._kad.routing_table
        original_add = table.add_peer

        async def add_peer(peer: PeerInfo | ID, *, skip_server_mode_check: bool = False
                           ) -> bool:
            peer_id = peer.peer_id if isinstance(peer, PeerInfo) else peer
            if not self._admissible(peer_id):
                return False
            added: bool = await original_add(peer)
            return added

        cast(Any, table).add_peer = add_peer
        cast(Any, self._kad.peer_routing).host = _ServersOnly(host, self._admissible)

    @property
    def server(self) -> bool:
        return self._kad.mode == DHTMode.SERVER

    def is_server_member(self, peer: ID) -> bool:
        """Does identify say `peer` is a mesh member in DHT server mode?"""
        return SERVER_MARKER in stored_protocols(self._host, peer) and self._is_member(peer)

    def _admissible(self, peer: ID) -> bool:
        """A server member, or a peer identify has not described yet: lookups learn servers
        from other servers before connecting to them (`prune` drops those that were not)."""
        return not stored_protocols(self._host, peer) or self.is_server_member(peer)

    def prune(self) -> None:
        """Drop routing-table peers that identify has since shown are no server members."""
        for peer in self.routing_peers():
            if not self._admissible(peer):
                self._kad.routing_table.remove_peer(peer)

    async def run(self) -> None:
        """Run the DHT's own maintenance until cancelled (its first refresh finds nothing:
        `refresh()` once connected)."""
        try:
            async with background_trio_service(self._kad):
                while True:
                    await trio.sleep(60)
                    for key in self.slots.expire(time.time()):
                        self._kad.value_store.remove(key)
        finally:
            if self.server:
                self._host.remove_stream_handler(KAD_PROTOCOL)
                self._host.remove_stream_handler(SERVER_MARKER)

    async def set_server(self, server: bool) -> None:
        """Serve KAD (and keep records for others) or not; peers learn it by identify push."""
        if server == self.server:
            return
        await self._kad.switch_mode(DHTMode.SERVER if server else DHTMode.CLIENT)
        if server:  # switch_mode registered py-libp2p's own handler: put ours in front
            self._host.set_stream_handler(KAD_PROTOCOL, guarded_handler("dht", self._handle))
            self._host.set_stream_handler(SERVER_MARKER, reset_quietly)
        else:
            self._host.remove_stream_handler(SERVER_MARKER)
        push = getattr(self._host, "_push_identify_to_all_peers", None)
        if push is not None:
            with trio.move_on_after(LOOKUP_TIMEOUT):
                await push()

    async def _handle(self, stream: INetStream) -> None:
        _sender.set((str(stream.muxed_conn.peer_id), source_network(stream.muxed_conn)))
        await self._kad.handle_stream(stream)

    async def add_peer(self, peer: ID) -> bool:
        """Put a connected peer in the routing table if it is a server-mode member."""
        return await self._kad.routing_table.add_peer(peer)

    def routing_peers(self) -> list[ID]:
        return list(self._kad.routing_table.get_peer_ids())

    async def refresh(self) -> int:
        """Look up this node and random keys to fill the routing table; returns its size.
        Failures are logged, never raised."""
        with trio.move_on_after(LOOKUP_TIMEOUT):
            try:
                await self._kad.refresh_routing_table()
            except Exception as exc:  # py-libp2p's lookups raise anything; none is fatal
                log.info("dht: refresh failed: %s", exc)
        return self._kad.routing_table.size()

    async def publish(self, record: bytes, peer: ID) -> bool:
        """Store this node's signed record under its key, here and at the closest servers;
        False if the walk failed or took over `LOOKUP_TIMEOUT` (logged)."""
        with trio.move_on_after(LOOKUP_TIMEOUT):
            try:
                await self._kad.put_value(record_key(peer), record)
                return True
            except MeshNatError:
                raise  # a record that does not verify: this node's own bug
            except Exception as exc:  # a lookup failure; the next publish retries
                log.info("dht: publish failed: %s", exc)
        return False

    async def lookup(self, peer: ID) -> AddressRecord | None:
        """The newest valid record of `peer` among the first `LOOKUP_QUORUM` valid copies
        the walk finds (None if none verifies; forged copies do not count).

        py-libp2p answers from the local store when it holds the key, however old: the local
        copy is set aside for the network walk and the better of the two kept.
        """
        key, store = record_key(peer), self._kad.value_store
        local = store.store.pop(key.encode(), None)
        found: bytes | None = None
        with trio.move_on_after(LOOKUP_TIMEOUT):
            try:
                found = await self._kad.get_value(key, quorum=LOOKUP_QUORUM)
            except Exception as exc:
                log.info("dht: lookup of %s failed: %s", peer, exc)
        candidates = [v for v in (found, local and local[0].value) if v]
        if local is not None and key.encode() not in store.store:
            store.store[key.encode()] = local
        if not candidates:
            return None
        best = candidates[RecordValidator(self.slots).select(key, candidates)]
        try:
            return check_record(key, best, time.time())
        except MeshNatError as exc:
            log.info("dht: no valid record of %s: %s", peer, exc)
            return None
