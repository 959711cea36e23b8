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

MESH_NODES = int(os.environ.get("MESHNAT_MESH_NODES", "8"))
"""20 pass on an idle machine (benchmarks/bench_automesh.py measures them); CI runs 8."""
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


async def test_every_node_finds_every_other_by_peer_id_and_opens_a_stream() -> None:
    async with mesh(MESH_NODES) as running:
        nodes = running.nodes
        with trio.fail_after(DEADLINE):
            for node in nodes:
                await node.mesh.wait_published()
        reached: dict[tuple[int, int], bytes] = {}
        retried: list[tuple[int, int]] = []

        async def reach(i: int, j: int) -> bytes:
            path = await nodes[i].connect(nodes[j].peer_id)
            assert path.peer == nodes[j].peer_id and path.kind is PathKind.DIRECT
            return await echo(nodes[i], PeerInfo(nodes[j].peer_id, []), f"{i}->{j}".encode(),
                              connection=path.connection)

        async def reach_all(i: int) -> None:
            for j in range(len(nodes)):
                if i != j:
                    try:
                        reached[i, j] = await reach(i, j)
                    except PeerUnavailable:  # py-libp2p sometimes hands out a dying
                        retried.append((i, j))  # connection under load: once more
                        reached[i, j] = await reach(i, j)

        with trio.fail_after(4 * DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(len(nodes)):
                    nursery.start_soon(reach_all, i)
        assert reached == {(i, j): f"{i}->{j}".encode() for i in range(len(nodes))
                           for j in range(len(nodes)) if i != j}
        assert len(retried) <= len(reached) // 10, retried
        for node in nodes:  # reflectors: confirmed public, one per network, at least three
            assert len(node.mesh.reflectors) >= 3


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
