"""Rendezvous on loopback: register and look up signed records, expiry, limits, bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from meshnat import MeshNode
from meshnat._libp2p import PeerInfo, read_frame, write_frame
from meshnat.errors import ConfigError, PeerRefused, PeerUnavailable
from meshnat.records import AddressRecord, RecordAuthority, RecordConfig, sign_record
from meshnat.rendezvous import (
    RENDEZVOUS_PROTOCOL,
    RendezvousClient,
    RendezvousConfig,
    RendezvousService,
)
from meshnat.rendezvous.messages import Register
from meshnat.wire import decode, encode, new_txid
from meshnat.wire.error_response import ErrorCode, ErrorResponse
from tests.support.fake_reflectors import nodes


async def member(node: MeshNode, name: str, *, ttl: int = 600) -> RendezvousClient:
    authority = await node.mount(RecordAuthority(RecordConfig(name=name, ttl=ttl,
                                                              publish_local=True)))
    return await node.mount(RendezvousClient(authority))


async def rendezvous(node: MeshNode, **limits: object) -> PeerInfo:
    await node.mount(RendezvousService(replace(RendezvousConfig(), **limits)))  # type: ignore[arg-type]
    return node.peer_info()


async def raw_request(node: MeshNode, point: PeerInfo, frame: bytes) -> ErrorResponse:
    stream = await node.open_stream(point, RENDEZVOUS_PROTOCOL)
    await write_frame(stream, frame)
    return decode(await read_frame(stream), ErrorResponse)


async def test_members_of_a_network_find_each_others_verified_records_and_no_one_else() -> None:
    async with nodes(4) as (rv, a, b, c):
        point = await rendezvous(rv)
        ca, cb, cc = await member(a, "alice"), await member(b, "bob"), await member(c, "carol")
        with trio.fail_after(15):
            assert 590 <= await ca.register(point, "net-1") <= 600
            await cb.register(point, "net-1")
            await cc.register(point, "other.net")
            found = await ca.discover(point, "net-1")
            elsewhere = await cc.discover(point, "other.net")
            nothing = await ca.discover(point, "nobody-here")
        assert {(r.peer_id, r.name) for r in found} == {(a.peer_id, "alice"), (b.peer_id, "bob")}
        bob = next(r for r in found if r.peer_id == b.peer_id)
        assert {str(x) for x in bob.direct_addrs()} == {
            str(x).rsplit("/p2p/", 1)[0] for x in b.addrs}
        assert [r.peer_id for r in elsewhere] == [c.peer_id] and nothing == []


async def test_a_new_record_replaces_the_registered_one_and_lookup_pages_through_many() -> None:
    async with nodes(6) as (rv, *members):
        point = await rendezvous(rv, page_size=2)
        clients = [await member(node, f"m{i}") for i, node in enumerate(members)]
        with trio.fail_after(20):
            for client in clients:
                await client.register(point, "big")
            first = await clients[0].discover(point, "big")  # three pages of two
            clients[0].authority.set_services(["chat"])  # the authority signs a newer record
            await clients[0].register(point, "big")
            again = await clients[1].discover(point, "big")
        assert sorted(r.name or "" for r in first) == [f"m{i}" for i in range(5)]
        mine = [r for r in again if r.peer_id == members[0].peer_id]
        assert len(again) == 5 and len(mine) == 1 and mine[0].services == ("chat",)


async def test_registrations_expire_with_their_ttl() -> None:
    async with nodes(3) as (rv, a, b):
        # The point grants 3 s whatever the record's 600 s (the TTL rules on virtual time:
        # tests/unit/test_rendezvous_core.py); a 2 s record could expire before it registered.
        point = await rendezvous(rv, min_ttl=1, max_ttl=3)
        ca, cb = await member(a, "short"), await member(b, "reader")
        with trio.fail_after(15):
            granted = await ca.register(point, "net")
            assert granted == 3
            assert len(await cb.discover(point, "net")) == 1
            await trio.sleep(granted + 0.1)  # the point's time itself is what is tested here
            assert await cb.discover(point, "net") == []
        assert rv.peer_id is not None


async def test_limits_per_peer_per_namespace_and_on_request_rate() -> None:
    async with nodes(4) as (rv, a, b, c):
        point = await rendezvous(rv, max_namespaces_per_peer=1, max_per_namespace=1,
                                 request_rate=0.01, request_burst=4)
        ca, cb, cc = await member(a, "a"), await member(b, "b"), await member(c, "c")
        with trio.fail_after(15):
            await ca.register(point, "one")
            with pytest.raises(PeerRefused) as per_peer:
                await ca.register(point, "two")
            with pytest.raises(PeerRefused) as per_namespace:
                await cb.register(point, "one")
            await ca.register(point, "one")  # refreshing the one it holds is fine
            for _ in range(4):
                await cc.discover(point, "one")
            with pytest.raises(PeerRefused) as rate:
                await cc.discover(point, "one")
        assert per_peer.value.code == "rate-limited" and "1 namespaces" in per_peer.value.reason
        assert per_namespace.value.code == "unavailable" and "full" in per_namespace.value.reason
        assert rate.value.code == "rate-limited"


async def test_bad_input_gets_a_clear_error_and_the_point_keeps_serving() -> None:
    async with nodes(3) as (rv, a, b):
        point = await rendezvous(rv)
        ca, cb = await member(a, "alice"), await member(b, "bob")
        with trio.fail_after(20):
            with pytest.raises(ConfigError, match="namespace"):
                await ca.register(point, "no spaces allowed")
            garbage = await raw_request(a, point, b"\xff\x00garbage")
            bad_ns = await raw_request(a, point, encode(Register(
                new_txid(), "x", b"rec", 60)).replace(b"ax", b"a\x00"))
            # Bob replays Alice's genuine signed record as his own registration
            alices = ca.authority.current().data
            replayed = await raw_request(b, point, encode(Register(new_txid(), "net", alices,
                                                                   60)))
            # a record naming Bob but signed by Alice
            forged_record = replace(ca.authority.current().record, peer_id=b.peer_id)
            with pytest.raises(Exception, match="cannot sign"):
                sign_record(a.host.get_private_key(), forged_record)
            tampered = bytearray(alices)
            tampered[tampered.index(b"alice")] ^= 1
            forged = await raw_request(a, point, encode(Register(new_txid(), "net",
                                                                 bytes(tampered), 60)))
            short_ttl = await raw_request(a, point, encode(Register(new_txid(), "net", alices,
                                                                    1)))
            await cb.register(point, "net")  # still serving
            assert [r.name for r in await ca.discover(point, "net")] == ["bob"]
        assert garbage.code is ErrorCode.BAD_REQUEST
        assert bad_ns.code is ErrorCode.BAD_REQUEST and "namespace" in bad_ns.reason
        assert replayed.code is ErrorCode.INVALID_RECORD and "own record" in replayed.reason
        assert forged.code is ErrorCode.INVALID_RECORD and "verify" in forged.reason
        assert short_ttl.code is ErrorCode.BAD_REQUEST and "ttl" in short_ttl.reason


async def test_an_older_record_cannot_replace_a_newer_registration() -> None:
    async with nodes(2) as (rv, a):
        point = await rendezvous(rv)
        ca = await member(a, "alice")
        with trio.fail_after(15):
            old = ca.authority.current().data
            ca.authority.set_services(["chat"])  # a newer record is signed
            await ca.register(point, "net")
            stale = await raw_request(a, point, encode(Register(new_txid(), "net", old, 60)))
        assert stale.code is ErrorCode.INVALID_RECORD and "older" in stale.reason


async def test_a_record_pointing_at_someone_elses_address_never_connects_to_them() -> None:
    async with nodes(3) as (alice, bob, carol):
        # Bob signs, validly, a record that lists Carol's addresses as his own
        lie = AddressRecord(peer_id=bob.peer_id, seq=1, addrs=tuple(
            x.decapsulate(f"/p2p/{carol.peer_id}") for x in carol.addrs), issued_at=0, ttl=60)
        signed = sign_record(bob.host.get_private_key(), lie)
        for addr in signed.record.direct_addrs():  # TCP (Noise) and QUIC (TLS) alike
            with trio.fail_after(15), pytest.raises(PeerUnavailable) as refused:
                await alice.connect(PeerInfo(bob.peer_id, [addr]))
            if "/tcp/" in str(addr):  # Noise says why; py-libp2p's QUIC error only logs it
                assert "failed to upgrade security" in str(refused.value)
        # the security handshake found Carol where Bob was expected: no connection counts
        assert not alice.host.get_network().get_connections(bob.peer_id)
        assert not alice.host.get_network().get_connections(carol.peer_id)

