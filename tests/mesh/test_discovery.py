"""Discovery on loopback against real and misbehaving reflectors (no sleeps; bounded)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
import trio.testing

from meshnat import InsufficientResponses, NoConsensus, _libp2p
from meshnat._libp2p import read_frame, write_frame
from meshnat.discovery import DiscoveryConfig, PeerAddressDiscovery
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError, NotMounted
from meshnat.events import AddressConfirmed, AddressDisputed, MeshEvent, StreamRejected
from meshnat.node import MeshNode
from meshnat.reflection import REFLECT_PROTOCOL, ReflectionConfig, ReflectionService
from meshnat.reflection.client import observe_over_stream
from meshnat.reflection.messages import (
    ObserveRequest,
    ObserveResponse,
    Transport,
)
from meshnat.wire import decode, encode, new_txid
from meshnat.wire.error_response import ErrorCode, ErrorResponse
from meshnat.wire.frames import encode_uvarint
from tests.support.fake_reflectors import Behaviour, FakeReflector, nodes

LIE = Endpoint.parse("203.0.113.9:9")
# every loopback reflector shares 127.0.0.1, so here each peer id is its own observer group
LOOPBACK_VOTES = replace(DiscoveryConfig(), group_by_network=False, timeout=1.0)


@asynccontextmanager
async def mesh(honest: int, *fakes: Behaviour, config: DiscoveryConfig = LOOPBACK_VOTES,
               events: list[MeshEvent] | None = None
               ) -> AsyncIterator[tuple[MeshNode, PeerAddressDiscovery]]:
    """A client with discovery, `honest` real reflectors and one fake per behaviour."""
    async with nodes(1 + honest + len(fakes)) as (client, *reflectors):
        for node in reflectors[:honest]:
            await node.mount(ReflectionService())
        for node, behaviour in zip(reflectors[honest:], fakes, strict=True):
            await node.mount(FakeReflector(behaviour, LIE))
        sink = events.append if events is not None else (lambda e: None)
        discovery = await client.mount(PeerAddressDiscovery(
            [r.peer_info() for r in reflectors], config, events=sink))
        yield client, discovery


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_honest_reflectors_agree_on_the_listening_endpoint(transport: str) -> None:
    events: list[MeshEvent] = []
    async with mesh(3, events=events) as (client, discovery):
        with trio.fail_after(10):
            consensus = await discovery.discover(transport)
        assert consensus.address == client.listen_endpoint(transport)
        assert consensus.votes == consensus.voters == 3 and not consensus.dissent
        assert len(consensus.rtts) == 3 and all(r > 0 for r in consensus.rtts.values())
        assert discovery.latest(transport) == consensus
    assert events == [AddressConfirmed(transport, consensus.address, 3, 3)]


async def test_colluding_liars_in_the_minority_cannot_move_the_answer() -> None:
    async with mesh(3, Behaviour.LIE, Behaviour.LIE) as (client, discovery):
        with trio.fail_after(10):
            consensus = await discovery.discover()
        assert consensus.address == client.listen_endpoint("udp")
    assert dict(consensus.tally)[LIE] == 2 and len(consensus.dissent) == 2


async def test_a_tie_between_truth_and_lies_is_no_consensus_not_a_guess() -> None:
    events: list[MeshEvent] = []
    async with mesh(2, Behaviour.LIE, Behaviour.LIE, events=events) as (_, discovery):
        with trio.fail_after(10), pytest.raises(NoConsensus) as caught:
            await discovery.discover()
    assert dict(caught.value.consensus.tally)[LIE] == 2
    assert discovery.latest() is None
    assert events == [AddressDisputed("udp", 4, False)]


async def test_an_address_later_seen_to_depend_on_the_destination_is_forgotten() -> None:
    # a mesh node behind a symmetric NAT that had one reflector took that one's view as its
    # address (1 of 1 votes) and kept publishing it after more reflectors showed a port per
    # destination (the NAT lab's symmetric site)
    async with nodes(4) as (client, honest, *fakes):
        await honest.mount(ReflectionService())
        own = client.listen_endpoint("udp")
        here = Endpoint.parse(f"{client.local_endpoints('udp')[0].ip}:{own.port}")
        for fake, port in zip(fakes, (own.port + 1, own.port + 2), strict=True):
            await fake.mount(FakeReflector(Behaviour.LIE, replace(here, port=port)))
        discovery = await client.mount(PeerAddressDiscovery(
            [honest.peer_info()], replace(LOOPBACK_VOTES, min_responses=1)))
        with trio.fail_after(10):
            assert (await discovery.discover()).address == here
            discovery.reflectors = [honest.peer_info(), *(f.peer_info() for f in fakes)]
            with pytest.raises(NoConsensus) as caught:
                await discovery.discover()
        assert caught.value.consensus.endpoint_dependent
        assert discovery.latest() is None  # unknown now, not the one reflector's view


async def test_silent_slow_garbage_and_forged_ids_are_ignored_within_the_deadline() -> None:
    fakes = (Behaviour.SILENT, Behaviour.SLOW, Behaviour.GARBAGE, Behaviour.STALE_ID)
    config = replace(LOOPBACK_VOTES, min_responses=2)
    async with mesh(2, *fakes, config=config) as (client, discovery):
        started = trio.current_time()
        with trio.fail_after(10):
            consensus = await discovery.discover()
        elapsed = trio.current_time() - started
        assert consensus.address == client.listen_endpoint("udp") and consensus.voters == 2
    assert elapsed < config.timeout + 1.0  # the overall deadline bounds the round


async def test_too_few_answers_is_insufficient_responses() -> None:
    async with mesh(1, Behaviour.SILENT, Behaviour.SILENT) as (_, discovery):
        with trio.fail_after(10), pytest.raises(InsufficientResponses) as caught:
            await discovery.discover()
    assert (caught.value.got, caught.value.needed, caught.value.asked) == (1, 3, 3)


async def test_a_replayed_answer_counts_once_per_request() -> None:
    config = replace(LOOPBACK_VOTES, min_responses=2)
    async with mesh(2, Behaviour.REPLAY, config=config) as (client, discovery):
        with trio.fail_after(10):
            first = await discovery.discover()
            assert first.votes == 3
            second = await discovery.discover()  # the replayer now answers with an old id
        assert second.voters == 2 and second.address == client.listen_endpoint("udp")


async def test_without_reflectors_the_address_stays_unknown() -> None:
    async with nodes(1) as (client,):
        discovery = await client.mount(PeerAddressDiscovery([], LOOPBACK_VOTES))
        with pytest.raises(InsufficientResponses):
            await discovery.discover()
        assert discovery.latest() is None
        with pytest.raises(ConfigError):
            await discovery.discover("sctp")


async def test_discovery_must_be_mounted() -> None:
    with pytest.raises(NotMounted):
        await PeerAddressDiscovery([]).discover()


async def test_reflector_rate_limits_one_peer_with_an_error_and_keeps_serving_others() -> None:
    limited = ReflectionConfig(rate=0.001, burst=2)
    async with nodes(3) as (reflector, greedy, polite):
        service = await reflector.mount(ReflectionService(limited))
        target = reflector.peer_info()
        with trio.fail_after(10):
            for _ in range(2):
                await observe_over_stream(greedy, target, timeout=5)
            stream = await greedy.open_stream(target, REFLECT_PROTOCOL)
            await write_frame(stream, encode(ObserveRequest(new_txid())))
            refusal = decode(await read_frame(stream), ErrorResponse)
            assert refusal.code is ErrorCode.RATE_LIMITED
            assert (await observe_over_stream(polite, target, timeout=5)).observed
    stats = service.statistics()
    assert (stats.served, stats.rate_limited) == (3, 1)


async def test_malformed_requests_are_refused_counted_and_the_reflector_keeps_working() -> None:
    events: list[MeshEvent] = []
    async with nodes(2) as (reflector, client):
        service = await reflector.mount(ReflectionService(events=events.append))
        with trio.fail_after(10):
            stream = await client.open_stream(reflector.peer_info(), REFLECT_PROTOCOL)
            await write_frame(stream, b"\xa1\x00\x01")  # valid CBOR, not a message
            refusal = decode(await read_frame(stream), ErrorResponse)
            ok = await observe_over_stream(client, reflector.peer_info(), timeout=5)
        assert refusal.code is ErrorCode.BAD_REQUEST
        assert ok.observed == client.listen_endpoint("tcp")
        assert service.statistics().malformed == 1
    assert events == [StreamRejected(REFLECT_PROTOCOL, "bad_request")]


async def test_periodic_rediscovery_runs_in_the_background_and_on_network_change() -> None:
    events: list[MeshEvent] = []
    config = replace(LOOPBACK_VOTES, interval=3600.0, transports=("udp",))
    async with mesh(3, config=config, events=events) as (_, discovery):
        with trio.fail_after(10):
            while len(events) < 1:           # the first round runs at mount
                await trio.testing.wait_all_tasks_blocked()
            discovery.network_changed()
            while len(events) < 2:           # and one more when told the network changed
                await trio.testing.wait_all_tasks_blocked()
    assert [type(e) for e in events] == [AddressConfirmed, AddressConfirmed]


async def test_stream_reflection_over_quic_reports_the_quic_connection_source() -> None:
    async with nodes(2) as (reflector, client):
        await reflector.mount(ReflectionService())
        quic_only = reflector.peer_info()
        quic_only.addrs[:] = [a for a in quic_only.addrs if "/quic-v1" in str(a)]
        with trio.fail_after(10):
            stream = await client.open_stream(quic_only, REFLECT_PROTOCOL)
            txid = new_txid()
            await write_frame(stream, encode(ObserveRequest(txid)))
            answer = decode(await read_frame(stream), ObserveResponse)
        assert answer.txid == txid and answer.transport is Transport.UDP
        # the reflector reports the port the QUIC connection left from: a fresh socket's with
        # py-libp2p's QUIC, the listen port's with meshnat's own
        (conn,) = client.host.get_network().get_connections(reflector.peer_id)
        local_port = _libp2p.local_port(conn)
        assert answer.observed == Endpoint.parse(f"127.0.0.1:{local_port}")


async def test_an_oversized_frame_is_refused_before_its_body_is_read() -> None:
    async with nodes(2) as (reflector, client):
        service = await reflector.mount(ReflectionService())
        with trio.fail_after(10):
            stream = await client.open_stream(reflector.peer_info(), REFLECT_PROTOCOL)
            await stream.write(encode_uvarint(1 << 30))  # claims a 1 GiB message, sends none
            with pytest.raises(Exception):  # noqa: B017  reset by the reflector
                await stream.read(10)
        assert service.statistics().malformed == 1
