"""Pure reflection logic: what to answer, to whom, and what to count.

A reflector answers an `ObserveRequest` with the source endpoint it observed, unless the
requester is over its rate limit. Over UDP the response is never larger than the request
(no amplification), and a limited or malformed datagram gets silence; over a stream a limited
requester gets a `ErrorResponse`.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnat.endpoint import Endpoint
from meshnat.errors import RemoteProtocolError, UnexpectedMessage
from meshnat.ratelimit import RateLimiter
from meshnat.reflection.messages import (
    ObserveRequest,
    ObserveResponse,
    Transport,
)
from meshnat.wire import decode, encode, frame_datagram, unframe_datagram
from meshnat.wire.error_response import ErrorCode, ErrorResponse


@dataclass(frozen=True, slots=True)
class ReflectionStatistics:
    served: int
    rate_limited: int
    malformed: int
    dropped: int
    tracked_keys: int


class ReflectorCore:
    """Answers observe requests; one instance per reflection service."""

    def __init__(self, *, rate: float, burst: int, max_keys: int) -> None:
        self._peers = RateLimiter(rate=rate, burst=burst, max_keys=max_keys)
        self._ips = RateLimiter(rate=rate, burst=burst, max_keys=max_keys)
        self.served = self.rate_limited = self.malformed = self.dropped = 0

    def answer_stream(
        self, request: ObserveRequest, observed: Endpoint | None, transport: Transport,
        peer: str, now: float,
    ) -> ObserveResponse | ErrorResponse:
        """The response for a request that arrived on a stream from `peer`."""
        if not self._peers.allow(peer, now):
            self.rate_limited += 1
            return ErrorResponse(request.txid, ErrorCode.RATE_LIMITED, "too many requests")
        if observed is None:
            return ErrorResponse(request.txid, ErrorCode.NO_OBSERVED_ADDRESS,
                                "no transport address (relayed connection)")
        self.served += 1
        return ObserveResponse(request.txid, observed, transport)

    def answer_datagram(self, data: bytes, src: Endpoint, now: float) -> bytes | None:
        """The datagram to send back to `src`, or None for silence."""
        payload = unframe_datagram(data)
        if payload is None:
            return None
        try:
            request = decode(payload, ObserveRequest)
        except UnexpectedMessage:  # another meshnat message on the shared socket: not ours
            return None
        except RemoteProtocolError:
            self.malformed += 1
            return None
        if not self._ips.allow(src.ip, now):
            self.rate_limited += 1
            return None
        reply = frame_datagram(encode(ObserveResponse(request.txid, src, Transport.UDP)))
        if len(reply) > len(data):  # never amplify: an unpadded request gets silence
            self.malformed += 1
            return None
        self.served += 1
        return reply

    def note_malformed(self) -> None:
        self.malformed += 1

    def note_dropped(self) -> None:
        self.dropped += 1

    def statistics(self) -> ReflectionStatistics:
        return ReflectionStatistics(
            self.served, self.rate_limited, self.malformed, self.dropped,
            len(self._peers) + len(self._ips)
        )
