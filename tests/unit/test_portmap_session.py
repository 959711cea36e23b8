"""MappingSession and GatewayProbe on virtual time: retransmission, renewal, reboots,
conflicts, release, and who may answer."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnat.endpoint import Endpoint
from meshnat.portmap import Failed, Lost, MappingProtocol, Obtained, Released, pcp
from meshnat.portmap.gateway import parse_default_gateway
from meshnat.portmap.probe import GatewayProbe
from meshnat.portmap.session import MappingSession
from meshnat.portmap.timing import PCP_SCHEDULE, EpochTracker, Retransmission
from tests.unit.test_portmap_codec import NONCE, pcp_map_response

GATEWAY = IPv4Address("10.1.0.1")
FROM_GATEWAY = Endpoint(GATEWAY, 5351)
CLIENT = IPv4Address("10.1.0.10")
EXTERNAL = IPv4Address("11.18.0.10")


def natpmp_map(epoch: int, external: int = 4001, lifetime: int = 7200, result: int = 0,
               internal: int = 4001, opcode: int = 0x81) -> bytes:
    return (bytes((0, opcode)) + result.to_bytes(2, "big") + epoch.to_bytes(4, "big")
            + internal.to_bytes(2, "big") + external.to_bytes(2, "big")
            + lifetime.to_bytes(4, "big"))


def session(protocol: MappingProtocol = MappingProtocol.NATPMP,
            ports: list[int] | None = None) -> MappingSession:
    picks = iter(ports or [5000, 5001, 5002, 5003, 5004])
    return MappingSession(protocol, "udp", 4001, gateway=GATEWAY, client_ip=CLIENT,
                          lifetime=7200, nonce=NONCE, rand=lambda: 0.5,
                          pick_port=lambda: next(picks), external_ip=EXTERNAL)


def test_natpmp_retransmits_at_250_ms_doubling_nine_times_then_fails() -> None:
    s = session()
    s.start(0.0)
    sends = [0.0]
    assert len(s.pop_datagrams()) == 1
    events: list[object] = []
    while not s.done:
        now = s.get_timer()
        assert now is not None
        events += s.handle_timer(now)
        if s.pop_datagrams():
            sends.append(now)
    assert sends == [0.25 * (2**k - 1) for k in range(9)]  # RFC 6886 §3.1: 0.25, 0.5, ...
    assert events == [Failed("nat-pmp: no answer from the gateway")]


def test_pcp_waits_three_seconds_first_with_jitter() -> None:
    low = Retransmission(PCP_SCHEDULE, 0.0, lambda: 0.0)
    assert low.due(0.0) and low.get_timer() == pytest.approx(2.7)  # (1 - 0.1) * IRT
    high = Retransmission(PCP_SCHEDULE, 0.0, lambda: 1.0)
    assert high.due(0.0) and high.get_timer() == pytest.approx(3.3)


def test_a_mapping_is_renewed_halfway_and_kept() -> None:
    s = session()
    s.start(0.0)
    s.pop_datagrams()
    (obtained,) = s.receive(natpmp_map(epoch=100), FROM_GATEWAY, 0.01)
    assert isinstance(obtained, Obtained) and not obtained.renewal
    assert obtained.mapping.external == Endpoint(EXTERNAL, 4001)
    assert s.get_timer() == pytest.approx(3600.01)
    assert s.handle_timer(3600.01) == [] and len(s.pop_datagrams()) == 1  # the renewal
    (renewed,) = s.receive(natpmp_map(epoch=3700), FROM_GATEWAY, 3600.02)
    assert renewed == Obtained(renewed.mapping, renewal=True)


def test_an_epoch_that_went_back_means_a_reboot_and_the_mapping_is_made_again() -> None:
    s = session()
    s.start(0.0)
    s.receive(natpmp_map(epoch=5000), FROM_GATEWAY, 0.0)
    s.handle_timer(3600.0)
    events = s.receive(natpmp_map(epoch=30, external=4100), FROM_GATEWAY, 3600.1)
    assert [type(e) for e in events] == [Lost, Obtained]
    assert isinstance(events[0], Lost) and events[0].reason == "gateway-rebooted"
    assert isinstance(events[1], Obtained) and events[1].mapping.external.port == 4100


def pcp_announce(epoch: int) -> bytes:
    return bytes((2, 0x80, 0, 0)) + bytes(4) + epoch.to_bytes(4, "big") + bytes(12)


def test_an_announcement_remaps_at_once_even_when_the_epochs_do_not_show_a_restart() -> None:
    s = session(MappingProtocol.PCP)
    s.start(0.0)
    s.pop_datagrams()
    s.receive(pcp_map_response(epoch=1), FROM_GATEWAY, 0.0)
    # restarted half a second later: epoch 0 is within RFC 6887 §8.5's slack of epoch 1
    (lost,) = s.announced(pcp_announce(0), FROM_GATEWAY, 0.5)
    assert isinstance(lost, Lost) and lost.reason == "gateway-rebooted" and s.mapping is None
    assert s.announced(pcp_announce(0), FROM_GATEWAY, 0.6) == []  # already asking again
    (remap,) = s.pop_datagrams()
    assert remap[:8] == pcp.map_request(CLIENT, NONCE, "udp", 4001, 4001, 7200)[:8]
    (obtained,) = s.receive(pcp_map_response(epoch=3), FROM_GATEWAY, 20.1)
    assert isinstance(obtained, Obtained) and not obtained.renewal


def test_announcements_from_elsewhere_or_of_another_protocol_are_ignored() -> None:
    s = session(MappingProtocol.PCP)
    s.start(0.0)
    s.receive(pcp_map_response(epoch=5000), FROM_GATEWAY, 0.0)
    assert s.announced(pcp_announce(1), Endpoint(CLIENT, 5351), 1.0) == []
    assert s.announced(bytes.fromhex("00800000000000010b120032"), FROM_GATEWAY, 1.0) == []
    assert s.mapping is not None and s.ignored == 2


def test_an_unrenewed_mapping_is_lost_at_expiry() -> None:
    s = session()
    s.start(0.0)
    s.receive(natpmp_map(epoch=1), FROM_GATEWAY, 0.0)
    events: list[tuple[float, object]] = []
    while not s.done:
        now = s.get_timer()
        assert now is not None
        events += [(now, e) for e in s.handle_timer(now)]
        s.pop_datagrams()
    (lost_at, lost), (_, failed) = events  # renewals unanswered, then a last try to map
    assert isinstance(lost, Lost) and lost.reason == "expired" and lost_at == 7200.0
    assert isinstance(failed, Failed)


def test_pcp_tries_another_port_when_the_suggested_one_is_taken() -> None:
    s = session(MappingProtocol.PCP)
    s.start(0.0)
    assert s.pop_datagrams()[0][42:44] == (4001).to_bytes(2, "big")
    assert s.receive(pcp_map_response(result=11, external=0), FROM_GATEWAY, 0.1) == []
    (retry,) = s.pop_datagrams()
    assert retry[42:44] == (5000).to_bytes(2, "big")  # CANNOT_PROVIDE_EXTERNAL: another
    (obtained,) = s.receive(pcp_map_response(external=5000), FROM_GATEWAY, 0.2)
    assert isinstance(obtained, Obtained) and obtained.mapping.external.port == 5000


def test_pcp_gives_up_after_max_conflicts() -> None:
    s = session(MappingProtocol.PCP)
    s.start(0.0)
    events: list[object] = []
    for _ in range(5):
        events += s.receive(pcp_map_response(result=11, lifetime=30), FROM_GATEWAY, 0.1)
    assert events == [Failed("pcp: the gateway answered CANNOT_PROVIDE_EXTERNAL",
                             "CANNOT_PROVIDE_EXTERNAL", 30.0)]


@pytest.mark.parametrize("source, frame", [
    (Endpoint(IPv4Address("10.1.0.66"), 5351), natpmp_map(1)),  # not the gateway
    (Endpoint(GATEWAY, 5350), natpmp_map(1)),                    # not its port 5351
    (FROM_GATEWAY, natpmp_map(1, internal=4999)),                # another mapping's answer
    (FROM_GATEWAY, natpmp_map(1, opcode=0x82)),                  # the TCP answer
    (FROM_GATEWAY, b"\x00\x81garbage"),
])
def test_answers_that_are_not_ours_are_ignored(source: Endpoint, frame: bytes) -> None:
    s = session()
    s.start(0.0)
    assert s.receive(frame, source, 0.1) == [] and s.ignored == 1 and s.mapping is None


def test_a_pcp_answer_with_another_nonce_is_ignored() -> None:
    s = session(MappingProtocol.PCP)
    s.start(0.0)
    assert s.receive(pcp_map_response(nonce=bytes(12)), FROM_GATEWAY, 0.1) == []
    assert s.ignored == 1


def test_refusals_are_failures_with_the_code() -> None:
    s = session()
    s.start(0.0)
    (failed,) = s.receive(natpmp_map(1, result=2, external=0, lifetime=0), FROM_GATEWAY, 0.1)
    assert isinstance(failed, Failed) and failed.code == "NOT_AUTHORIZED" and s.done


def test_release_deletes_the_mapping_with_lifetime_zero() -> None:
    s = session()
    assert s.release(0.0) == [Released()]  # nothing held: nothing sent
    s.start(0.0)
    s.pop_datagrams()
    s.receive(natpmp_map(1), FROM_GATEWAY, 0.0)
    assert s.release(1.0) == []
    (delete,) = s.pop_datagrams()
    assert delete[4:].hex() == "0fa10000" "00000000"  # internal port, port 0, lifetime 0
    assert s.receive(natpmp_map(2, external=0, lifetime=0), FROM_GATEWAY, 1.1) == [Released()]
    assert s.done and s.mapping is None


def test_an_unanswered_release_ends_after_two_sends() -> None:
    s = session()
    s.start(0.0)
    s.pop_datagrams()
    s.receive(natpmp_map(1), FROM_GATEWAY, 0.0)
    s.release(1.0)
    events: list[object] = []
    sends = len(s.pop_datagrams())
    while not s.done:
        now = s.get_timer()
        assert now is not None and now < 3.0
        events += s.handle_timer(now)
        sends += len(s.pop_datagrams())
    assert events == [Released()] and sends == 2


@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 2**32 - 1)), max_size=20))
def test_the_epoch_tracker_never_flags_a_steady_clock(steps: list[tuple[float, int]]) -> None:
    tracker, now, epoch = EpochTracker(), 0.0, 1000
    for delta, _ in steps:
        now, epoch = now + delta, epoch + int(delta)
        assert tracker.observe(epoch, now) is False


def test_the_epoch_tracker_flags_a_clock_that_ran_far_behind() -> None:
    tracker = EpochTracker()
    tracker.observe(1000, 0.0)
    assert tracker.observe(1010, 100.0)  # 100 s passed here, 10 s there: state was lost


def probe_pair() -> GatewayProbe:
    return GatewayProbe(GATEWAY, CLIENT, 0.0, lambda: 0.5)


def test_the_probe_asks_both_at_once_and_prefers_pcp() -> None:
    probe = probe_pair()
    announce, address = probe.pop_datagrams(0.0)
    assert announce[:2] == b"\x02\x00" and address == b"\x00\x00"
    probe.receive(bytes.fromhex("00800000000001f20b120032"), FROM_GATEWAY)
    assert probe.natpmp_ip == IPv4Address("11.18.0.50") and not probe.decided(0.1)
    probe.receive(bytes((2, 0x80, 0, 0)) + bytes(4) + (498).to_bytes(4, "big") + bytes(12),
                  FROM_GATEWAY)
    assert probe.pcp is True and probe.decided(0.1)


def test_a_natpmp_only_gateway_is_decided_once_it_refuses_pcp() -> None:
    probe = probe_pair()
    probe.pop_datagrams(0.0)
    probe.receive(bytes.fromhex("0080000100000010"), FROM_GATEWAY)  # PCP: unsupported version
    probe.receive(bytes.fromhex("00800000000001f20b120032"), FROM_GATEWAY)
    assert probe.pcp is False and probe.natpmp_ip is not None and probe.decided(0.1)


def test_a_silent_gateway_is_decided_when_both_schedules_end() -> None:
    probe = probe_pair()
    now = 0.0
    while not probe.decided(now):
        probe.pop_datagrams(now)
        timer = probe.get_timer(now)
        assert timer is not None and timer <= 127.75  # NAT-PMP: 0.25 s · (2^9 - 1)
        now = timer
    assert probe.pcp is None and probe.natpmp_ip is None


def test_the_probe_ignores_other_sources() -> None:
    probe = probe_pair()
    probe.receive(bytes.fromhex("00800000000001f20b120032"), Endpoint(CLIENT, 5351))
    assert probe.natpmp_ip is None and probe.ignored == 1


ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask
eth0\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF
eth0\t00000000\t0100010A\t0003\t0\t0\t0\t00000000
"""


def test_the_default_gateway_is_read_from_the_route_table() -> None:
    assert parse_default_gateway(ROUTES) == IPv4Address("10.1.0.1")
    assert parse_default_gateway(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[1]) is None
    assert parse_default_gateway("header\nbad line here x\n") is None
