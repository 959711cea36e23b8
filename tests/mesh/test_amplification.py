"""Nothing sprayed at an address the peer has not proven: a peer that names a third party's
address in its Offers gets at most 3x its own bytes sent there (docs/protocols/traversal.md).

The "victim" is a set of sockets on 127.0.0.2, an IP no peer is connected from; the attacker
is a plain node on 127.0.0.1 speaking the protocols by hand. Loopback delivers a datagram into
the receiving socket within `sendto`, so what the victim holds once the node reports an
allowance spent (or a punch finished) is everything the node sent there.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from ipaddress import IPv4Address

import pytest
import trio

from meshnat import MeshNode, NodeConfig, _libp2p, exchange
from meshnat._libp2p import PeerInfo
from meshnat.endpoint import Endpoint
from meshnat.errors import PeerRefused
from meshnat.punch import PUNCH_PROTOCOL, HolePuncher, PunchConfig
from meshnat.punch.messages import MappingHint, Padding, Sync
from meshnat.punch.messages import Offer as PunchOffer
from meshnat.relay import RelayClient, RelayService
from meshnat.traversal import TraversalConfig, TraversalService, TraversalStatistics
from meshnat.traversal.messages import Offer
from meshnat.traversal.service import TRAVERSAL_PROTOCOL
from meshnat.wire import decode, encode, frame_stream, new_txid
from meshnat.wire.error_response import ErrorResponse
from tests.support.fake_reflectors import LOOPBACK

VICTIM = "127.0.0.2"
UDP_HEADERS = 28
TCP_DIAL = 240  # what a TCP dial to an unproven IP is charged (traversal/budget.py)


class Victim:
    """UDP and TCP sockets on VICTIM that count what arrives (non-blocking, read on demand)."""

    def __init__(self, udp: list[socket.socket], tcp: list[socket.socket]) -> None:
        self.udp, self.tcp = udp, tcp
        self.datagrams = self.udp_bytes = self.connections = 0

    def endpoints(self, kind: str) -> tuple[Endpoint, ...]:
        socks = self.udp if kind == "udp" else self.tcp
        return tuple(Endpoint(IPv4Address(VICTIM), s.getsockname()[1]) for s in socks)

    def drain(self) -> int:
        """Take in everything that arrived; returns the bytes on the wire so far (UDP with
        its headers, each TCP connection as one dial's charge)."""
        for sock in self.udp:
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                self.datagrams += 1
                self.udp_bytes += len(data) + UDP_HEADERS
        for sock in self.tcp:
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                self.connections += 1
                conn.close()
        return self.udp_bytes + self.connections * TCP_DIAL


@contextmanager
def victim(udp: int, tcp: int = 0) -> Iterator[Victim]:
    socks: list[socket.socket] = []
    try:
        udp_socks, tcp_socks = [], []
        for _ in range(udp):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((VICTIM, 0))
            sock.setblocking(False)
            udp_socks.append(sock)
        for _ in range(tcp):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((VICTIM, 0))
            sock.listen(64)
            sock.setblocking(False)
            tcp_socks.append(sock)
        yield Victim(udp_socks, tcp_socks)
    finally:
        for sock in socks:
            sock.close()



async def behind_relay(stack: AsyncExitStack) -> tuple[MeshNode, MeshNode]:
    """A relay and a node reserved on it, both on loopback, closed with `stack`."""
    relay = await stack.enter_async_context(MeshNode(LOOPBACK))
    node = await stack.enter_async_context(MeshNode(LOOPBACK))
    await relay.mount(RelayService())
    await (await node.mount(RelayClient())).reserve(relay.peer_info())
    return relay, node


async def through_relay(peer: MeshNode, relay: MeshNode, node: MeshNode) -> None:
    """Connect `peer` to `node` over a circuit only: nothing proves an address of `peer`."""
    await (await peer.mount(RelayClient())).dial(relay.peer_info(), node.peer_id)

async def test_a_traversal_offer_naming_a_third_party_gets_it_at_most_3x_its_bytes() -> None:
    with trio.fail_after(20), victim(udp=8) as target:
        sent, received, stats = await traversal_offered(target, target.endpoints("udp"),
                                                        withheld=1)
        assert received <= 3 * sent, f"{received} bytes to the victim for {sent} sent"
        assert stats.withheld > 0 and stats.unproven_bytes == received
        assert target.datagrams >= 1  # it did try: a few probes, then no more


async def traversal_offered(target: Victim, endpoints: tuple[Endpoint, ...], *,
                            withheld: int) -> tuple[int, int, TraversalStatistics]:
    """An attacker's traversal Offer naming `endpoints`: the bytes it sent, the bytes `target`
    received once the node withheld `withheld` probes (or sent over 3x), and the statistics."""
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(MeshNode(LOOPBACK))
        attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
        service = await node.mount(TraversalService())
        offer = Offer(new_txid(), endpoints)
        sent = len(frame_stream(encode(offer)))
        await exchange.request(attacker, node.peer_info(), TRAVERSAL_PROTOCOL, offer,
                               Offer, timeout=5)
        for _ in range(1000):  # 10 s at most; ends once the allowance is spent
            await trio.sleep(0.01)
            if target.drain() > 3 * sent or service.statistics().withheld >= withheld:
                break
        return sent, target.drain(), service.statistics()


async def test_traversals_started_by_one_network_leave_room_for_another() -> None:
    config = TraversalConfig(max_traversals=4, max_per_network=2, max_per_peer=2)
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(MeshNode(LOOPBACK))
        service = await node.mount(TraversalService(config))
        same = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(3)]
        other = await stack.enter_async_context(MeshNode(NodeConfig(listen_ip="127.0.9.1")))
        with trio.fail_after(20):
            opened = []
            for peer in same:  # 3 ids on 127.0.0.0/24: the third is over the network's share
                try:
                    await exchange.request(peer, node.peer_info(), TRAVERSAL_PROTOCOL,
                                           Offer(new_txid(), ()), Offer, timeout=5)
                    opened.append(peer)
                except PeerRefused:
                    pass
            assert len(opened) == 2
            assert service.statistics().refused == {"network": 1}
            # a peer of another network (dialling from its own IP) still gets one
            addr = node.peer_info().addrs[0]
            await other.host.get_network().dial_addr(addr, node.peer_id, ("127.0.9.1", 0))
            await exchange.request(other, PeerInfo(node.peer_id, []), TRAVERSAL_PROTOCOL,
                                   Offer(new_txid(), ()), Offer, timeout=5)
            assert service.statistics().started_by_peers == 3


async def punch_as_attacker(attacker: MeshNode, node: MeshNode, offer: PunchOffer) -> int:
    """Speak the punch protocol by hand: Offer, read the answer (and any padding), Sync.
    Returns the bytes sent."""
    stream = await attacker.open_stream(PeerInfo(node.peer_id, []), PUNCH_PROTOCOL, timeout=5)
    frames = [frame_stream(encode(offer)), frame_stream(encode(Sync(offer.txid)))]
    await stream.write(frames[0])
    for _ in range(20):
        reply = decode(await _libp2p.read_frame(stream), PunchOffer, Padding)
        if isinstance(reply, PunchOffer):
            break
    await stream.write(frames[1])
    return sum(map(len, frames))


@pytest.mark.parametrize(("ours", "claimed"), [
    (MappingHint.ENDPOINT_INDEPENDENT, MappingHint.ENDPOINT_DEPENDENT),  # node sprays ports
    (MappingHint.ENDPOINT_DEPENDENT, MappingHint.ENDPOINT_INDEPENDENT),  # node's 256 sockets
    (MappingHint.UNKNOWN, MappingHint.UNKNOWN),  # a traversal on the shared port
])
async def test_punch_offers_naming_a_third_party_get_it_at_most_3x_their_bytes(
        ours: MappingHint, claimed: MappingHint, caplog: pytest.LogCaptureFixture) -> None:
    config = PunchConfig(mapping=ours, punch_timeout=1.0)
    with trio.fail_after(30), victim(udp=1, tcp=8) as target:
        async with AsyncExitStack() as stack:
            relay, node = await behind_relay(stack)
            attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
            puncher = await node.mount(HolePuncher(config))
            # requests come over a relay, as punches do: nothing proves an address of the peer
            await through_relay(attacker, relay, node)
            offer = PunchOffer(new_txid(), target.endpoints("udp"), target.endpoints("tcp"),
                               claimed)
            sent = await punch_as_attacker(attacker, node, offer)
            received = 0
            for _ in range(1000):  # 10 s at most; ends when the node's punch has finished
                await trio.sleep(0.01)
                received = target.drain()
                if received > 3 * sent or puncher.statistics().paid > 0:
                    break
            received = target.drain()
            assert received <= 3 * sent, f"{received} bytes to the victim for {sent} sent"
            stats = puncher.statistics()
            assert 0 < stats.paid <= sent and stats.withheld > 0
            # birthday probes go to random ports the victim's sockets miss: the node's own
            # count of what it sent to the unproven IP holds the bound as well
            assert received <= stats.unproven_bytes <= 3 * stats.paid
            assert target.connections <= 1
        bugs = [r for r in caplog.records
                if r.levelno >= logging.ERROR and r.name.startswith("meshnat")]
        assert not bugs, bugs[0].getMessage()


async def test_punches_held_by_one_relay_network_leave_room_for_another_network() -> None:
    config = PunchConfig(max_responding=2, max_responding_per_network=1)
    async with AsyncExitStack() as stack:
        relay, node = await behind_relay(stack)
        puncher = await node.mount(HolePuncher(config))
        relayed = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(2)]
        other = await stack.enter_async_context(MeshNode(NodeConfig(listen_ip="127.0.9.1")))
        with trio.fail_after(20):
            for peer in relayed:
                await through_relay(peer, relay, node)
            addr = node.peer_info().addrs[0]
            await other.host.get_network().dial_addr(addr, node.peer_id, ("127.0.9.1", 0))
            answers = []
            for peer in [*relayed, other]:  # each sends an Offer and holds its stream
                stream = await peer.open_stream(PeerInfo(node.peer_id, []), PUNCH_PROTOCOL,
                                                timeout=5)
                await stream.write(frame_stream(encode(PunchOffer(new_txid(), (), ()))))
                answers.append(decode(await _libp2p.read_frame(stream), PunchOffer,
                                      ErrorResponse))
            # the two relayed peers count for the relay's network: one slot; the third peer
            # is of another network and is answered
            assert [type(a) for a in answers] == [PunchOffer, ErrorResponse, PunchOffer]
            assert puncher.statistics().refused == {"network": 1}


@pytest.mark.parametrize("candidates", [1, 3])
async def test_a_public_punch_offer_gets_one_tcp_dial_per_paid_candidate(
        candidates: int) -> None:
    """A peer claiming to be public is simply dialled: each dial to an unproven IP is one
    attempt (py-libp2p's dial_addr retries 3 times), so a victim that accepts and closes sees
    no more connections than were paid for."""
    config = PunchConfig(mapping=MappingHint.UNKNOWN, punch_timeout=2.0)
    with trio.fail_after(30), victim(udp=0, tcp=candidates) as target:
        async with AsyncExitStack() as stack:
            relay, node = await behind_relay(stack)
            attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
            puncher = await node.mount(HolePuncher(config))
            await through_relay(attacker, relay, node)
            offer = PunchOffer(new_txid(), (), target.endpoints("tcp"), MappingHint.UNKNOWN,
                               public=True, padding=bytes(100))
            sent = await punch_as_attacker(attacker, node, offer)
            received = 0
            for _ in range(1000):  # 10 s at most; ends when the node's punch has finished
                await trio.sleep(0.01)
                received = target.drain()
                if puncher.statistics().paid > 0:
                    break
            received = target.drain()
            assert target.connections >= 1  # it did dial
            assert received <= 3 * sent, f"{target.connections} dials for {sent} bytes sent"
            assert received <= puncher.statistics().unproven_bytes


async def test_a_traversal_offer_naming_many_hosts_of_one_network_gets_it_3x_in_all() -> None:
    """The allowance is per victim network (/24), shared by all its unproven IPs: eight hosts
    of one /24 get 3x the Offer's bytes together, not 3x each."""
    hosts = [f"127.0.5.{i}" for i in range(2, 10)]
    socks: list[socket.socket] = []
    try:
        for host in hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind((host, 0))
            sock.setblocking(False)
        target = Victim(socks, [])
        endpoints = tuple(Endpoint(IPv4Address(h), s.getsockname()[1])
                          for h, s in zip(hosts, socks, strict=True))
        with trio.fail_after(20):
            sent, received, stats = await traversal_offered(target, endpoints,
                                                            withheld=len(hosts))
        assert received <= 3 * sent, f"{received} bytes to the /24 for {sent} sent"
        assert stats.unproven_bytes == received > 0
    finally:
        for sock in socks:
            sock.close()


async def test_a_traversal_offer_naming_multicast_broadcast_or_the_node_itself_probes_none(
        ) -> None:
    """Candidates out of the peer's scope are refused and counted: only the victim socket
    (a plain loopback address, as the peer's own) is probed."""
    with trio.fail_after(20), victim(udp=1) as target:
        async with AsyncExitStack() as stack:
            node = await stack.enter_async_context(MeshNode(LOOPBACK))
            attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
            service = await node.mount(TraversalService())
            refused = (node.local_endpoints("udp")[0], node.local_endpoints("tcp")[0],
                       Endpoint(IPv4Address("224.0.0.251"), 5353),
                       Endpoint(IPv4Address("255.255.255.255"), 9))
            offer = Offer(new_txid(), refused + target.endpoints("udp"))
            await exchange.request(attacker, node.peer_info(), TRAVERSAL_PROTOCOL, offer,
                                   Offer, timeout=5)
            for _ in range(1000):  # 10 s at most; ends once an allowance is spent
                await trio.sleep(0.01)
                target.drain()
                if service.statistics().withheld > 0:
                    break
            stats = service.statistics()
            assert stats.unproven_bytes == target.drain() > 0  # nothing went anywhere else
            assert stats.refused_candidates == len(refused)


async def test_a_punch_offer_naming_the_node_itself_is_neither_probed_nor_dialled() -> None:
    config = PunchConfig(mapping=MappingHint.UNKNOWN, punch_timeout=1.0)
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            relay, node = await behind_relay(stack)
            attacker = await stack.enter_async_context(MeshNode(LOOPBACK))
            puncher = await node.mount(HolePuncher(config))
            await through_relay(attacker, relay, node)
            offer = PunchOffer(new_txid(), (node.local_endpoints("udp")[0],),
                               (node.local_endpoints("tcp")[0],), MappingHint.UNKNOWN,
                               public=True, padding=bytes(100))
            await punch_as_attacker(attacker, node, offer)
            for _ in range(1000):  # 10 s at most; ends when the node's punch has finished
                await trio.sleep(0.01)
                if puncher.statistics().paid > 0:
                    break
            stats = puncher.statistics()
            assert stats.paid > 0 and stats.unproven_bytes == 0
            assert stats.refused_candidates == 2


async def test_one_peer_behind_a_relay_cannot_take_the_relays_whole_share_of_traversals(
        ) -> None:
    """Requests over a relay count for the relay's network; one peer id holds at most
    `max_per_peer` (2) of its `max_per_network` (4) traversals, so another peer behind the
    same relay still gets one."""
    async with AsyncExitStack() as stack:
        relay, node = await behind_relay(stack)
        service = await node.mount(TraversalService())
        greedy, other = [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(2)]
        with trio.fail_after(20):
            for peer in (greedy, other):
                await through_relay(peer, relay, node)

            async def request(peer: MeshNode) -> bool:
                try:
                    await exchange.request(peer, PeerInfo(node.peer_id, []),
                                           TRAVERSAL_PROTOCOL, Offer(new_txid(), ()), Offer,
                                           timeout=5)
                except PeerRefused:
                    return False
                return True

            held = [await request(greedy) for _ in range(4)]
            assert held.count(True) < TraversalConfig().max_per_network
            assert service.statistics().refused.get("peer", 0) > 0
            assert await request(other)  # the relay's share still has room
