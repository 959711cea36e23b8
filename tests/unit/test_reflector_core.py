"""The reflector's pure core: answers, rate limits, amplification, and the token bucket."""

from __future__ import annotations

from ipaddress import ip_address

import cbor2

from meshnat.endpoint import Endpoint
from meshnat.ratelimit import RateLimiter
from meshnat.reflection.core import ReflectorCore
from meshnat.reflection.messages import (
    REQUEST_PADDING,
    ObserveRequest,
    ObserveResponse,
    Transport,
)
from meshnat.wire import decode, encode, frame_datagram, unframe_datagram
from meshnat.wire.error_response import ErrorCode, ErrorResponse

TXID = bytes(16)
V4 = Endpoint(ip_address("198.18.0.30"), 40000)
V6 = Endpoint(ip_address("2001:db8::30"), 40000)


def core(**kw: float) -> ReflectorCore:
    return ReflectorCore(**{"rate": 1.0, "burst": 2, "max_keys": 100, **kw})  # type: ignore[arg-type]


def padded(txid: bytes = TXID) -> bytes:
    return frame_datagram(encode(ObserveRequest(txid, bytes(REQUEST_PADDING))))


def test_udp_answer_reports_the_source_and_is_never_larger_than_the_request() -> None:
    for src in (V4, V6):
        request = padded()
        reply = core().answer_datagram(request, src, now=0.0)
        assert reply is not None and len(reply) <= len(request)
        answer = decode(unframe_datagram(reply) or b"", ObserveResponse)
        assert answer == ObserveResponse(TXID, src, Transport.UDP)


def test_an_unpadded_udp_request_gets_silence_when_the_answer_would_be_larger() -> None:
    c = core()
    assert c.answer_datagram(frame_datagram(encode(ObserveRequest(TXID))), V6, now=0.0) is None
    assert c.statistics().malformed == 1 and c.statistics().served == 0


def test_garbage_and_foreign_datagrams_get_silence() -> None:
    c = core()
    assert c.answer_datagram(b"\xc0quic", V4, now=0.0) is None           # not ours at all
    assert c.answer_datagram(frame_datagram(b"\xff"), V4, now=0.0) is None
    reply = frame_datagram(encode(ObserveResponse(TXID, V4, Transport.UDP)))
    assert c.answer_datagram(reply, V4, now=0.0) is None                # a response, not for us
    assert c.statistics().malformed == 1


def test_udp_rate_limit_is_per_source_ip_and_refills_with_time() -> None:
    c = core()
    other = Endpoint(ip_address("198.18.0.31"), 1)
    answers = [c.answer_datagram(padded(), V4, now=0.0) for _ in range(4)]
    assert [a is not None for a in answers] == [True, True, False, False]
    assert c.answer_datagram(padded(), other, now=0.0) is not None       # others unaffected
    assert c.answer_datagram(padded(), V4, now=1.0) is not None          # one token per second
    assert c.statistics().rate_limited == 2


def test_stream_answers_errors_when_limited_or_when_there_is_no_transport_address() -> None:
    c = core()
    req = ObserveRequest(TXID)
    assert c.answer_stream(req, V4, Transport.TCP, "p", 0.0) == ObserveResponse(
        TXID, V4, Transport.TCP)
    relayed = c.answer_stream(req, None, Transport.TCP, "p", 0.0)
    assert isinstance(relayed, ErrorResponse) and relayed.code is ErrorCode.NO_OBSERVED_ADDRESS
    limited = c.answer_stream(req, V4, Transport.TCP, "p", 0.0)
    assert isinstance(limited, ErrorResponse) and limited.code is ErrorCode.RATE_LIMITED


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=10)
    for key in range(1000):
        assert limiter.allow(key, now=0.0)
    assert len(limiter) == 10


def ip_in(network: int, host: int) -> Endpoint:
    """An endpoint in 10.<network>.<host // 250>.<host % 250 + 1>: 250 hosts per /24."""
    return Endpoint(ip_address(f"10.{network}.{host // 250}.{host % 250 + 1}"), 40000)


def test_udp_requests_from_many_addresses_of_one_network_are_limited_as_one_network() -> None:
    c = ReflectorCore(rate=10.0, burst=20, max_keys=10_000, network_rate=40.0, network_burst=80)
    # 250 addresses of one /24, one request each: each IP is under its own limit
    answered = sum(c.answer_datagram(padded(), ip_in(1, host), now=0.0) is not None
                   for host in range(250))
    assert answered == 80                                                  # the network's burst
    assert c.answer_datagram(padded(), ip_in(2, 0), now=0.0) is not None  # another network
    assert c.answer_datagram(padded(), ip_in(1, 7), now=1.0) is not None  # 40 tokens a second


def test_a_flood_from_2000_addresses_leaves_other_networks_answered() -> None:
    c = ReflectorCore(rate=10.0, burst=20, max_keys=10_000)
    honest = Endpoint(ip_address("198.51.100.7"), 40000)
    honest_answers = 0
    for step in range(20):  # 20 rounds of 100 ms: every flood address sends each round
        now = step * 0.1
        for host in range(2000):  # 8 /24s of 250 addresses each
            c.answer_datagram(padded(), ip_in(1, host), now=now)
        honest_answers += c.answer_datagram(padded(), honest, now=now) is not None
    assert honest_answers == 20
    # 8 networks x (80 burst + 40/s x 1.9 s) at most, not 2,000 x 20
    assert c.statistics().served <= 8 * (80 + 40 * 2) + 20


def test_udp_total_rate_bounds_answers_over_all_networks() -> None:
    c = ReflectorCore(rate=10.0, burst=20, max_keys=10_000, total_rate=100.0, total_burst=100)
    answered = sum(c.answer_datagram(padded(), ip_in(network, 0), now=0.0) is not None
                   for network in range(200))
    assert answered == 100


def test_the_udp_queue_gives_each_network_a_fair_share() -> None:
    c = ReflectorCore(rate=10.0, burst=20, max_keys=100, udp_queue=64, udp_queue_per_network=16)
    flood = [c.enqueue_datagram(ip_in(1, host)) for host in range(100)]
    assert sum(claim is not None for claim in flood) == 16
    other = c.enqueue_datagram(ip_in(2, 0))
    assert other is not None
    c.dequeue_datagram(other)
    first = next(claim for claim in flood if claim is not None)
    c.dequeue_datagram(first)                                             # room again
    assert c.enqueue_datagram(ip_in(1, 99)) is not None
    assert c.statistics().dropped == 84


def test_streams_are_bounded_per_peer_per_network_and_in_total() -> None:
    c = ReflectorCore(rate=10.0, burst=20, max_keys=100, max_streams=8, max_streams_per_peer=2,
                      max_streams_per_network=4)
    mine = [c.open_stream("silent", V4) for _ in range(10)]
    assert sum(s is not None for s in mine) == 2                           # per peer
    same_network = [c.open_stream(f"id{n}", Endpoint(ip_address("198.18.0.99"), n + 1))
                    for n in range(10)]
    assert sum(s is not None for s in same_network) == 2                   # the /24 is full
    assert c.open_stream("honest", V6) is not None                         # another network
    assert c.open_stream("relayed", None) is not None                      # relays count apart
    held = next(s for s in mine if s is not None)
    c.close_stream(held)
    assert c.open_stream("silent", V4) is not None
    assert c.statistics().streams_refused == 16


def test_a_request_is_charged_before_decoding_and_any_encoding_is_charged_once() -> None:
    c = ReflectorCore(rate=1.0, burst=1, max_keys=100)
    canonical = padded()
    assert c.answer_datagram(canonical, V4, now=0.0) is not None
    # over the rate, a frame that starts like a request is shed before it is decoded
    broken = canonical[:-3]
    assert c.answer_datagram(broken, V4, now=0.0) is None
    assert c.statistics().rate_limited == 1 and c.statistics().malformed == 0
    # another key order decodes to the same request: charged once, after decoding
    reordered = frame_datagram(cbor2.dumps({2: TXID, 0: 1, 1: 1, 10: bytes(REQUEST_PADDING)}))
    other = Endpoint(ip_address("198.18.5.30"), 40000)
    assert c.answer_datagram(reordered, other, now=0.0) is not None
    assert c.answer_datagram(reordered, other, now=0.0) is None
    assert c.statistics().rate_limited == 2 and c.statistics().served == 2


def test_a_flood_from_the_256_networks_of_one_ipv6_slash_48_leaves_others_answered() -> None:
    c = ReflectorCore(rate=10.0, burst=20, max_keys=10_000)
    honest = Endpoint(ip_address("198.51.100.7"), 40000)
    honest_answers = 0
    for step in range(20):  # 20 rounds of 100 ms; each /56 sends 5 requests a round (50/s)
        now = step * 0.1
        for net in range(256):
            for host in range(5):
                src = Endpoint(ip_address(f"2001:db8:0:{net:02x}00::{host + 1}"), 40000)
                c.answer_datagram(padded(), src, now=now)
        honest_answers += c.answer_datagram(padded(), honest, now=now) is not None
    assert honest_answers == 20
    # the /48's bucket: 4 x (80 burst + 40/s x 1.9 s) at most
    assert c.statistics().served <= 4 * (80 + 40 * 2) + 20
