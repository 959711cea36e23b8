"""A mesh that organizes itself, on loopback: nodes given only the first node's address find
every other node by peer id, never use a forged record, and replace relays and reflectors
that leave.

Each node listens on its own 127.0.N.1, so every node is on its own /24. Every dial-back on
loopback would succeed, so reachability is given (`MeshConfig.reachability`): public for the
mesh, private for the node that needs relays. Dial-backs themselves: test_dialback.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from multiaddr import Multiaddr

from meshnat._libp2p import ID, PeerInfo
from meshnat._libp2p import records as envelopes
from meshnat._libp2p.dht import record_key
from meshnat.echo import EchoService, echo
from meshnat.errors import ForgedRecord, PeerUnavailable
from meshnat.mesh import MeshConfig, Reachability
from meshnat.node import MeshNode, NodeConfig
from meshnat.paths import PathKind
from meshnat.records import AddressRecord, sign_record
from meshnat.records.messages import RecordBody
from meshnat.wire import encode, new_txid

MESH_NODES = int(os.environ.get("MESHNAT_MESH_NODES", "20"))
"""The 20-node test's size (benchmarks/bench_mesh.py measures 20 and 100)."""
PUBLIC = MeshConfig(reachability=Reachability.PUBLIC)
PRIVATE = MeshConfig(reachability=Reachability.PRIVATE)
DEADLINE = 120.0


@dataclass
class Mesh:
    """Nodes running in their own tasks, so a test can stop one."""

    nursery: trio.Nursery
    nodes: list[MeshNode] = field(default_factory=list)
    scopes: dict[ID, trio.CancelScope] = field(default_factory=dict)

    async def add(self, mesh: MeshConfig = PUBLIC) -> MeshNode:
        index = len(self.nodes) + 1
        bootstrap = [str(self.nodes[0].addrs[0])] if self.nodes else []
        config = NodeConfig(listen_ip=f"127.0.{index}.1", bootstrap=bootstrap, mesh=mesh)
        node: MeshNode = await self.nursery.start(self._run, config)
        self.nodes.append(node)
        return node

    async def _run(self, config: NodeConfig, *,
                   task_status: trio.TaskStatus[MeshNode] = trio.TASK_STATUS_IGNORED) -> None:
        scope = trio.CancelScope()
        with scope:
            async with MeshNode(config) as node:
                await node.mount(EchoService())
                self.scopes[node.peer_id] = scope
                task_status.started(node)
                await trio.sleep_forever()

    async def add_plain(self) -> MeshNode:
        """A node outside the mesh (no bootstrap), on the next network."""
        config = NodeConfig(listen_ip=f"127.0.{len(self.nodes) + 1}.1")
        node: MeshNode = await self.nursery.start(self._run, config)
        self.nodes.append(node)
        return node

    def stop(self, node: MeshNode) -> None:
        self.scopes[node.peer_id].cancel()
        self.nodes.remove(node)


@asynccontextmanager
async def mesh(count: int, *, private: int = 0) -> AsyncIterator[Mesh]:
    async with trio.open_nursery() as nursery:
        running = Mesh(nursery)
        for _ in range(count):
            await running.add()
        for _ in range(private):
            await running.add(PRIVATE)
        yield running
        nursery.cancel_scope.cancel()


async def wait_until(node: MeshNode, predicate: Callable[[], bool]) -> None:
    """Wait for `predicate()` to hold, checked each time `node` has looked at the mesh."""
    with trio.fail_after(DEADLINE):
        while not predicate():
            await node.mesh.wait_reconciled()


async def test_twenty_nodes_given_one_address_find_each_other_by_id_and_heal() -> None:
    """The issue's mesh tier: 20 nodes (3 behind NAT), each given only the first node's
    address. Every node looks every other up by peer id (a verified record) and opens a
    stream to it; forged records for a real node and for an identity with none, held by
    half the servers, are never used; a node that leaves is replaced as reflector and relay by
    those that used it."""
    async with mesh(MESH_NODES - 3, private=3) as running:
        nodes = list(running.nodes)
        with trio.fail_after(DEADLINE):
            for node in nodes:
                await node.mesh.wait_published()

        # liars: every other server holds records forged by the last public node instead of
        # the true ones, one for the first node (pointing at a trap) and one for an identity
        # that published none; readers must find the first node's own record on the others
        attacker, victim = nodes[MESH_NODES - 4], nodes[0]
        nobody = ID.from_pubkey(create_new_key_pair().public_key)
        trap = await running.add_plain()
        trap_ip = trap.listen_endpoint("tcp").ip
        for forged_for in (victim.peer_id, nobody):
            forged = forged_record(attacker, forged_for, trap.addrs)
            for node in nodes[1::2]:
                node.mesh.dht._kad.value_store.put(record_key(forged_for).encode(), forged)

        found: dict[tuple[int, int], bytes] = {}

        async def find_and_reach(i: int, j: int) -> None:
            try:
                record = await nodes[i].mesh.lookup(nodes[j].peer_id)  # by id, verified
            except PeerUnavailable as exc:
                raise AssertionError(f"{i} -> {j}: {exc}") from exc
            assert record.peer_id == nodes[j].peer_id and record.direct_addrs()
            assert not any(f"/{trap_ip}/" in str(a) for a in record.addrs), (i, j)  # forged
            found[i, j] = await reach(i, j)  # first time: connect() hands out no dying one

        async def reach(i: int, j: int) -> bytes:
            path = await nodes[i].connect(nodes[j].peer_id)
            assert path.peer == nodes[j].peer_id and path.kind is PathKind.DIRECT
            return await echo(nodes[i], PeerInfo(nodes[j].peer_id, []), f"{i}->{j}".encode(),
                              connection=path.connection)

        async def from_node(i: int) -> None:
            for j in range(len(nodes)):
                if i != j:
                    await find_and_reach(i, j)

        with trio.fail_after(4 * DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(len(nodes)):
                    nursery.start_soon(from_node, i)
        assert found == {(i, j): f"{i}->{j}".encode() for i in range(len(nodes))
                         for j in range(len(nodes)) if i != j}
        assert await nodes[1].mesh.dht.lookup(nobody) is None
        assert not trap.connections(nodes[1].peer_id)  # the trap was never dialled
        for node in nodes:  # reflectors: confirmed public, one per network, at least three
            assert len(node.mesh.reflectors) >= 3

        # one node leaves: a relay of a NATed node, and a reflector of others
        nated = nodes[-1]
        await wait_until(nated, lambda: len(nated.mesh.autorelay.held) == 2)
        gone = next(iter(nated.mesh.autorelay.held))
        watchers = {n: len(n.mesh.reflectors) for n in nodes if gone in n.mesh.reflectors}
        running.stop(next(n for n in nodes if str(n.peer_id) == gone))
        assert watchers
        for watcher, count in watchers.items():
            def replaced(w: MeshNode = watcher, count: int = count) -> bool:
                return gone not in w.mesh.reflectors and len(w.mesh.reflectors) == count

            await wait_until(watcher, replaced)
        await wait_until(nated, lambda: len(nated.mesh.autorelay.held) == 2
                         and gone not in nated.mesh.autorelay.held)
        await wait_until(nated, lambda: not any(
            gone in str(a) for a in nated.mesh.authority.current().record.relay_addrs()) and
            len(nated.mesh.authority.current().record.relay_addrs()) == 2)


def forged_record(attacker: MeshNode, victim: ID, addrs: list[Multiaddr]) -> bytes:
    """A record naming `victim` with `addrs`, signed by the attacker."""
    body = RecordBody(new_txid(), envelopes.encode_peer_record(victim, 2**62, addrs),
                      int(time.time()), 600)
    return envelopes.seal(attacker.host.get_private_key(), encode(body))


async def test_a_forged_record_is_refused_by_servers_and_never_used_by_readers() -> None:
    victim = ID.from_pubkey(create_new_key_pair().public_key)  # an identity with no record
    async with mesh(3) as running:
        # the reader holds one connection (to the first node) and serves no DHT: it reaches
        # the victim only through what it looks up
        reader = await running.add(replace(PRIVATE, target_peers=1, relays=1))
        attacker = running.nodes[2]
        trap = await running.add_plain()  # where the forged record sends its readers
        with trio.fail_after(DEADLINE):
            for node in running.nodes[:4]:
                await node.mesh.wait_published()
        forged = forged_record(attacker, victim, trap.addrs)
        with pytest.raises(ForgedRecord):
            sign_record(attacker.host.get_private_key(), AddressRecord(
                peer_id=victim, seq=1, addrs=(), issued_at=int(time.time()), ttl=60))
        # honest servers refuse it: putting it fails validation, here first
        with pytest.raises(ForgedRecord):
            await attacker.mesh.dht._kad.put_value(record_key(victim), forged)
        # servers that lie: every one holds the forged record under the victim's key
        for node in running.nodes[:4]:
            node.mesh.dht._kad.value_store.put(record_key(victim).encode(), forged)
        assert await reader.mesh.dht.lookup(victim) is None
        with pytest.raises(PeerUnavailable):
            await reader.connect(victim)
        assert not trap.connections(reader.peer_id)  # its addresses were never dialled


async def test_a_relay_that_leaves_is_replaced_and_the_record_follows() -> None:
    async with mesh(4, private=1) as running:
        nated = running.nodes[-1]
        relays = nated.mesh.autorelay
        await wait_until(nated, lambda: len(relays.held) == 2)
        held = dict(relays.held)
        assert len(set(held.values())) == 2  # on distinct networks
        gone = next(p for p in held)
        running.stop(next(n for n in running.nodes if str(n.peer_id) == gone))
        await wait_until(nated, lambda: len(relays.held) == 2 and gone not in relays.held)
        replacement = next(p for p in relays.held if p not in held)

        def record_names_replacement() -> bool:
            addrs = [str(a) for a in nated.mesh.authority.current().record.relay_addrs()]
            return any(f"/p2p/{replacement}/p2p-circuit" in a for a in addrs) and not any(
                gone in a for a in addrs)

        await wait_until(nated, record_names_replacement)
        reader = next(n for n in running.nodes if n is not nated and str(n.peer_id) != replacement)
        relay = next(n for n in running.nodes if str(n.peer_id) == replacement)
        path = await reader.mesh.connect_via(nated.peer_id, [relay.peer_info()])
        assert path.kind is PathKind.RELAYED
        assert await echo(reader, PeerInfo(nated.peer_id, []), b"via the new relay",
                          connection=path.connection) == b"via the new relay"


async def test_a_reflector_that_leaves_is_replaced() -> None:
    async with mesh(5) as running:
        watcher = await running.add(replace(PUBLIC, reflectors=3))  # four candidates for three
        await wait_until(watcher, lambda: len(watcher.mesh.reflectors) == 3)
        before = list(watcher.mesh.reflectors)
        running.stop(next(n for n in running.nodes if str(n.peer_id) == before[0]))
        await wait_until(watcher, lambda: before[0] not in watcher.mesh.reflectors
                         and len(watcher.mesh.reflectors) == 3)
        assert watcher.mesh.reflectors[:2] == before[1:]  # the others stay
        assert watcher.mesh.discovery.reflectors[2].peer_id != before[0]
