"""The reflector's pure core: answers, rate limits, amplification, and the token bucket."""

from __future__ import annotations

from ipaddress import ip_address

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
