"""NatClassifier and ProbeHelperService on loopback (reflectors on 127.0.0.2 and .3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from meshnat import InsufficientResponses, MeshNode, NodeConfig
from meshnat._libp2p import PeerInfo, read_frame, write_frame
from meshnat.classify import (
    CLASSIFY_PROTOCOL,
    NatClassifier,
    NatType,
    ProbeHelperConfig,
    ProbeHelperService,
)
from meshnat.classify.messages import ProbeAck, ProbeRequest
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError, NotMounted
from meshnat.reflection import ReflectionService
from meshnat.wire import decode, encode, new_txid
from meshnat.wire.error_response import ErrorCode, ErrorResponse


@asynccontextmanager
async def reflectors(count: int, *, helper: bool = True,
                     config: ProbeHelperConfig | None = None
                     ) -> AsyncIterator[tuple[MeshNode, list[MeshNode], list[ProbeHelperService]]]:
    """A client on 127.0.0.1 and `count` reflectors on 127.0.0.2, .3, …"""
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(MeshNode(NodeConfig(listen_ip="127.0.0.1")))
        nodes, helpers = [], []
        for i in range(count):
            node = await stack.enter_async_context(
                MeshNode(NodeConfig(listen_ip=f"127.0.0.{i + 2}")))
            await node.mount(ReflectionService())
            if helper:
                helpers.append(await node.mount(ProbeHelperService(config)))
            nodes.append(node)
        yield client, nodes, helpers


async def test_a_node_without_nat_is_classified_open_with_every_fact_measured() -> None:
    async with reflectors(3) as (client, nodes, helpers):
        classifier = await client.mount(NatClassifier([n.peer_info() for n in nodes]))
        with trio.fail_after(20):
            report = await classifier.classify()
        assert report.nat_type is NatType.OPEN and report.behind_nat is False
        assert str(report.mapping) == "endpoint-independent"
        assert str(report.filtering) == "endpoint-independent"
        assert str(report.port_allocation) == "preserved"
        assert report.public_addrs == (client.local_endpoints("udp")[0],)
        assert report.hairpin is None and report.notes == ()
        assert sum(h.probes_sent for h in helpers) == 2
        tests = [e.test for e in report.evidence]
        assert tests.count("mapping") == 4 and tests.count("filtering") == 2


async def test_reflectors_without_the_probe_helper_give_a_partial_report() -> None:
    async with reflectors(2, helper=False) as (client, nodes, _):
        classifier = await client.mount(NatClassifier([n.peer_info() for n in nodes]))
        with trio.fail_after(20):
            report = await classifier.classify()
    assert report.filtering is None and report.mapping is None  # no second ports anywhere
    assert report.behind_nat is False
    assert any("second UDP port" in note for note in report.notes)


async def probe_request(client: MeshNode, helper_node: MeshNode, target: Endpoint
                        ) -> ProbeAck | ErrorResponse:
    stream = await client.open_stream(helper_node.peer_info(), CLASSIFY_PROTOCOL)
    await write_frame(stream, encode(ProbeRequest(new_txid(), target)))
    return decode(await read_frame(stream), ProbeAck, ErrorResponse)


async def test_the_helper_only_probes_the_requesters_own_address_and_rate_limits() -> None:
    config = ProbeHelperConfig(probe_rate=0.001, probe_burst=1)
    async with reflectors(1, config=config) as (client, nodes, (helper,)):
        with trio.fail_after(10):
            third_party = await probe_request(client, nodes[0], Endpoint.parse("127.0.0.9:53"))
            own = await probe_request(client, nodes[0], Endpoint.parse("127.0.0.1:9"))
            again = await probe_request(client, nodes[0], Endpoint.parse("127.0.0.1:9"))
        assert isinstance(third_party, ErrorResponse)
        assert third_party.code is ErrorCode.FORBIDDEN_TARGET
        assert isinstance(own, ProbeAck)
        assert isinstance(again, ErrorResponse) and again.code is ErrorCode.RATE_LIMITED
        assert (helper.probes_sent, helper.refused) == (1, 2)


async def test_classifier_errors_are_clear() -> None:
    with pytest.raises(NotMounted):
        await NatClassifier([]).classify()
    async with reflectors(0) as (client, _, _):
        classifier = await client.mount(NatClassifier([]))
        with pytest.raises(InsufficientResponses):
            await classifier.classify()
        unreachable = PeerInfo(client.peer_id, [])  # a reflector with no UDP address at all
        classifier = await client.mount(NatClassifier([unreachable]))
        with pytest.raises(InsufficientResponses):
            await classifier.classify()


async def test_fresh_identities_of_one_network_share_its_probe_rate() -> None:
    config = ProbeHelperConfig(probe_rate=100.0, probe_burst=10, network_rate=0.001,
                               network_burst=2)
    async with (reflectors(1, config=config) as (client, nodes, (helper,)),
                MeshNode(NodeConfig(listen_ip="127.0.0.1")) as second_id):
        with trio.fail_after(10):
            first = await probe_request(client, nodes[0], Endpoint.parse("127.0.0.1:9"))
            second = await probe_request(second_id, nodes[0], Endpoint.parse("127.0.0.1:9"))
            third = await probe_request(second_id, nodes[0], Endpoint.parse("127.0.0.1:9"))
    assert isinstance(first, ProbeAck) and isinstance(second, ProbeAck)
    assert isinstance(third, ErrorResponse) and third.code is ErrorCode.RATE_LIMITED
    assert (helper.probes_sent, helper.refused) == (2, 1)


async def test_a_dual_stack_node_is_classified_per_family_through_the_reflectors_ipv6() -> None:
    """Reflectors on 127.0.0.2-4 and ::1, a client on 127.0.0.1 and ::1: one report per
    family, the IPv6 one measured only over IPv6 (loopback has one IPv6 address, so its
    mapping across IPs cannot be told: the note says so), no NAT in either."""
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(MeshNode(NodeConfig(
            listen_ip="127.0.0.1", listen_ip6="::1")))
        nodes, helpers = [], []
        for i in range(3):
            node = await stack.enter_async_context(MeshNode(NodeConfig(
                listen_ip=f"127.0.0.{i + 2}", listen_ip6="::1")))
            await node.mount(ReflectionService())
            helpers.append(await node.mount(ProbeHelperService()))
            nodes.append(node)
        for helper in helpers:  # one alt port in both families
            assert set(helper._alt) == {4, 6}
            assert {s.getsockname()[1] for s in helper._alt.values()} == {helper.alt_port}
        classifier = await client.mount(NatClassifier([n.peer_info() for n in nodes]))
        with trio.fail_after(30):
            reports = await classifier.classify_families()
        assert list(reports) == [4, 6]
        v4, v6 = reports[4], reports[6]
        assert (v4.version, v4.nat_type, v4.local.ip.version) == (4, NatType.OPEN, 4)
        own6 = Endpoint.parse(f"[::1]:{client.listen_endpoint('udp', 6).port}")
        assert (v6.version, v6.local, v6.behind_nat, v6.udp_blocked) == (6, own6, False, False)
        assert v6.public_addrs == (own6,)
        assert v6.to_json()["ip_version"] == 6
        assert any("two distinct IP" in n for n in v6.notes)
        filtering = [e for e in v6.evidence if e.test == "filtering"]
        assert filtering and filtering[0].result == "received"  # from the alt port over IPv6
        assert all("127.0.0" not in e.target for e in v6.evidence if e.test == "mapping")


async def test_classifying_a_family_the_node_does_not_listen_on_is_refused() -> None:
    async with reflectors(1) as (client, nodes, _):
        classifier = await client.mount(NatClassifier([n.peer_info() for n in nodes]))
        with pytest.raises(ConfigError, match="IPv6"):
            await classifier.classify(version=6)
