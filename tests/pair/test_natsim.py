"""The RFC 4787 simulator itself: each mapping, filtering and allocation behaviour, binding
timeouts, hairpinning, port forwards, and a deterministic path model."""

from __future__ import annotations

import ast
import itertools
from ipaddress import ip_address
from pathlib import Path

import pytest

from meshnat.classify.report import Filtering, Mapping, PortAllocation
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError, LocalProtocolError
from tests.support.natsim import Delivery, PathModel, SimNet

NAT_IP, OUT_IP, OTHER_IP = (ip_address(a) for a in ("198.18.0.10", "198.18.0.20", "198.18.0.30"))
S1, S2 = Endpoint(OUT_IP, 3478), Endpoint(OUT_IP, 3479)  # one server, two ports
S3 = Endpoint(OTHER_IP, 3478)  # another server address
INSIDE = Endpoint(ip_address("10.1.0.10"), 4001)


def site(seed: int = 1, **nat: object) -> SimNet:
    net = SimNet(seed, path=PathModel(delay=0.01))
    behind = net.add_nat(NAT_IP, **nat)  # type: ignore[arg-type]
    net.add_host(INSIDE.ip, behind=behind)
    net.add_host(OUT_IP)
    net.add_host(OTHER_IP)
    return net


def exchange(net: SimNet, src: Endpoint, dst: Endpoint, now: float) -> list[Delivery]:
    """Send one datagram and return what arrives within 1 s."""
    net.send(src, dst, b"x", now)
    return net.deliver_until(now + 1.0)


def seen_as(net: SimNet, dst: Endpoint, now: float, src: Endpoint = INSIDE) -> Endpoint:
    (arrived,) = exchange(net, src, dst, now)
    return arrived.src


@pytest.mark.parametrize(("mapping", "same_for_port", "same_for_ip"), [
    (Mapping.ENDPOINT_INDEPENDENT, True, True),
    (Mapping.ADDRESS_DEPENDENT, True, False),
    (Mapping.ADDRESS_AND_PORT_DEPENDENT, False, False),
])
def test_mapping_behaviour_decides_which_destinations_share_an_external_port(
        mapping: Mapping, same_for_port: bool, same_for_ip: bool) -> None:
    net = site(mapping=mapping)
    first = seen_as(net, S1, 0.0)
    assert first == Endpoint(NAT_IP, 4001)  # preserved
    assert (seen_as(net, S2, 1.0) == first) is same_for_port  # same server, other port
    assert (seen_as(net, S3, 2.0) == first) is same_for_ip  # another server
    assert seen_as(net, S1, 3.0) == first  # the first mapping is reused for its destination


@pytest.mark.parametrize(("filtering", "other_port", "other_ip"), [
    (Filtering.ENDPOINT_INDEPENDENT, True, True),
    (Filtering.ADDRESS_DEPENDENT, True, False),
    (Filtering.ADDRESS_AND_PORT_DEPENDENT, False, False),
])
def test_filtering_behaviour_decides_which_sources_may_send_in(
        filtering: Filtering, other_port: bool, other_ip: bool) -> None:
    net = site(filtering=filtering)
    public = seen_as(net, S1, 0.0)
    assert [d.dst for d in exchange(net, S1, public, 1.0)] == [INSIDE]  # the contacted one
    assert bool(exchange(net, S2, public, 2.0)) is other_port
    assert bool(exchange(net, S3, public, 3.0)) is other_ip
    stats = net.statistics()
    assert stats.dropped.get("filtered", 0) == (not other_port) + (not other_ip)


def test_unsolicited_inbound_finds_no_mapping() -> None:
    net = site(filtering=Filtering.ENDPOINT_INDEPENDENT)
    assert exchange(net, S1, Endpoint(NAT_IP, 4001), 0.0) == []
    assert net.statistics().dropped == {"no-mapping": 1}


def test_packets_to_a_private_address_from_outside_are_unroutable() -> None:
    net = site()
    assert exchange(net, S1, INSIDE, 0.0) == []
    assert net.statistics().dropped == {"unroutable": 1}


def test_preserving_allocation_keeps_the_port_and_falls_back_when_it_is_taken() -> None:
    net = site(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT)
    assert seen_as(net, S1, 0.0).port == 4001
    assert seen_as(net, S2, 1.0).port != 4001  # 4001 is the first mapping's


def test_sequential_allocation_counts_up() -> None:
    net = site(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT, allocation=PortAllocation.SEQUENTIAL,
               port_range=(20000, 20009))
    ports = [seen_as(net, Endpoint(OUT_IP, 3000 + i), float(i)).port for i in range(5)]
    assert ports == [20000, 20001, 20002, 20003, 20004]


def test_random_allocation_is_seeded_in_range_and_never_reuses_a_live_port() -> None:
    def ports(seed: int) -> list[int]:
        net = site(seed, mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT,
                   allocation=PortAllocation.RANDOM, port_range=(20000, 20099))
        return [seen_as(net, Endpoint(OUT_IP, 3000 + i), float(i)).port for i in range(100)]

    first = ports(7)
    assert first == ports(7) and first != ports(8)
    assert sorted(first) == list(range(20000, 20100))  # every port once: the range is full
    assert first != sorted(first)


def test_a_full_port_range_drops_new_mappings() -> None:
    net = site(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT, port_range=(20000, 20001))
    for i in range(2):
        seen_as(net, Endpoint(OUT_IP, 3000 + i), float(i))
    assert exchange(net, INSIDE, Endpoint(OUT_IP, 3999), 2.0) == []
    assert net.statistics().dropped == {"no-port": 1}


def test_a_binding_expires_after_its_idle_timeout_and_outbound_refreshes_it() -> None:
    net = site(filtering=Filtering.ENDPOINT_INDEPENDENT, binding_timeout=30.0)
    public = seen_as(net, S1, 0.0)
    assert exchange(net, S3, public, 20.0)  # inbound does not refresh by default
    assert not exchange(net, S3, public, 30.5)  # 30 s after the last outbound: gone
    assert seen_as(net, S1, 32.0) == public  # a new mapping (the port was free again)
    assert exchange(net, S3, public, 40.0)
    seen_as(net, S1, 55.0)  # refreshed
    assert exchange(net, S3, public, 84.0)
    assert net.statistics().dropped == {"no-mapping": 1}


def test_inbound_refresh_keeps_a_binding_alive_when_enabled() -> None:
    net = site(filtering=Filtering.ENDPOINT_INDEPENDENT, binding_timeout=30.0,
               inbound_refresh=True)
    public = seen_as(net, S1, 0.0)
    for t in (20.0, 40.0, 60.0):
        assert exchange(net, S3, public, t)


def test_an_expired_binding_frees_its_port_for_another_mapping() -> None:
    net = site(mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT, binding_timeout=5.0,
               allocation=PortAllocation.SEQUENTIAL, port_range=(20000, 20000))
    assert seen_as(net, S1, 0.0).port == 20000
    assert exchange(net, INSIDE, S2, 1.0) == []  # the only port is taken
    assert [b.permits for b in net.nat(NAT_IP).bindings(5.5)] == []  # expired, forgotten
    assert seen_as(net, S2, 6.0).port == 20000  # the first mapping expired
    assert [(b.private, b.public.port) for b in net.nat(NAT_IP).bindings(6.5)] == [
        (INSIDE, 20000)]
    assert exchange(net, S1, Endpoint(NAT_IP, 20000), 7.0) == []  # now S2's: filtered


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpinning_loops_back_to_the_other_hosts_mapping(hairpin: bool) -> None:
    net = site(hairpin=hairpin, filtering=Filtering.ENDPOINT_INDEPENDENT)
    other = Endpoint(ip_address("10.1.0.11"), 5000)
    net.add_host(other.ip, behind=net.nat(NAT_IP))
    public = seen_as(net, S1, 0.0)  # INSIDE's mapping
    arrived = exchange(net, other, public, 1.0)
    if hairpin:  # RFC 4787 REQ-9: the source is the sender's external endpoint
        assert arrived == [Delivery(INSIDE, Endpoint(NAT_IP, 5000), b"x")]
    else:
        assert arrived == [] and net.statistics().dropped == {"hairpin-off": 1}
    assert [d.src for d in exchange(net, other, INSIDE, 2.0)] == [other]  # same LAN: direct


def test_port_forward_admits_any_source_and_is_the_hosts_endpoint_independent_mapping() -> None:
    net = site()
    net.nat(NAT_IP).forward(4001, INSIDE)
    assert [d.dst for d in exchange(net, S3, Endpoint(NAT_IP, 4001), 0.0)] == [INSIDE]
    assert seen_as(net, S1, 1.0) == Endpoint(NAT_IP, 4001)
    assert exchange(net, S3, Endpoint(NAT_IP, 4001), 1000.0) != []  # never expires


def test_blocked_site_sends_nothing() -> None:
    net = site(blocked=True)
    assert exchange(net, INSIDE, S1, 0.0) == []
    assert net.statistics().dropped == {"blocked": 1}


def test_who_names_the_socket_behind_an_external_endpoint() -> None:
    net = site()
    public = seen_as(net, S1, 0.0)
    assert net.who(public) == INSIDE and net.who(S1) == S1
    assert net.who(Endpoint(NAT_IP, 9)) is None and net.who(INSIDE) == INSIDE
    assert net.who(Endpoint(ip_address("192.0.2.1"), 1)) is None


def _arrivals(seed: int, model: PathModel, n: int = 400) -> list[tuple[float, bytes]]:
    net = SimNet(seed, path=model)
    net.add_host(OUT_IP)
    net.add_host(OTHER_IP)
    for i in range(n):
        net.send(S1, S3, i.to_bytes(2, "big"), i * 0.001)
    out = []
    while (t := net.next_delivery_time()) is not None:
        out += [(t, d.payload) for d in net.deliver_until(t)]
    return out


def test_path_model_is_deterministic_per_seed() -> None:
    model = PathModel(delay=0.05, jitter=0.02, loss=0.2, reorder=0.1, duplicate=0.05)
    assert _arrivals(3, model) == _arrivals(3, model)
    assert _arrivals(3, model) != _arrivals(4, model)


def test_delay_loss_reordering_and_duplication_are_as_configured() -> None:
    n = 4000
    plain = _arrivals(1, PathModel(delay=0.05), n)
    assert [p for _, p in plain] == [i.to_bytes(2, "big") for i in range(n)]
    assert all(abs(t - (0.05 + i * 0.001)) < 1e-9 for i, (t, _) in enumerate(plain))
    lossy = _arrivals(1, PathModel(delay=0.05, loss=0.25), n)
    assert abs(len(lossy) / n - 0.75) < 0.05  # 3,000 expected, sigma ~27: 7 sigma
    late = _arrivals(1, PathModel(delay=0.05, reorder=0.2, reorder_delay=0.01), n)
    order = [int.from_bytes(p, "big") for _, p in late]
    overtaken = sum(a > b for a, b in itertools.pairwise(order))
    assert 0.1 * n < overtaken < 0.3 * n and sorted(order) == list(range(n))
    twice = _arrivals(1, PathModel(delay=0.05, duplicate=0.1), n)
    assert 0.07 * n < len(twice) - n < 0.13 * n
    jittered = _arrivals(1, PathModel(delay=0.05, jitter=0.01), n)
    assert all(0.05 <= t - int.from_bytes(p, "big") * 0.001 < 0.06 + 1e-9 for t, p in jittered)


def test_per_path_models_override_the_default() -> None:
    net = SimNet(1, path=PathModel(delay=0.01))
    for ip in (OUT_IP, OTHER_IP, NAT_IP):
        net.add_host(ip)
    net.set_path(OUT_IP, OTHER_IP, PathModel(delay=0.3))
    net.send(S1, S3, b"slow", 0.0)
    net.send(S1, Endpoint(NAT_IP, 1), b"fast", 0.0)
    assert net.next_delivery_time() == pytest.approx(0.01)
    assert [d.payload for d in net.deliver_until(0.31)] == [b"fast", b"slow"]


def test_misuse_is_refused() -> None:
    net = site()
    with pytest.raises(ConfigError):
        net.add_host(INSIDE.ip)
    with pytest.raises(ConfigError):
        PathModel(loss=1.5)
    with pytest.raises(LocalProtocolError):
        net.send(Endpoint(ip_address("192.0.2.1"), 1), S1, b"", 0.0)  # no such host
    net.deliver_until(5.0)
    with pytest.raises(LocalProtocolError):
        net.send(INSIDE, S1, b"", 4.0)  # time went backwards


@pytest.mark.parametrize("module", ["support/natsim.py", "pair/harness.py", "pair/kinds.py",
                                    "pair/punch_cores.py", "pair/traversal_cores.py"])
def test_the_pair_tier_uses_no_sockets_event_loop_or_clock(module: str) -> None:
    tree = ast.parse((Path(__file__).parents[1] / module).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"trio", "socket", "time", "asyncio", "libp2p", "subprocess"}, module
