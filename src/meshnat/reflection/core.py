"""Pure reflection logic: what to answer, to whom, and what to count.

A reflector answers an `ObserveRequest` with the source endpoint it observed, unless the
requester is over a rate limit. Over UDP the response is never larger than the request
(no amplification), and a limited or malformed datagram gets silence; over a stream a limited
requester gets a `ErrorResponse`.

Fresh peer ids and addresses are free, so every limit also holds per source network (an IPv4
/24 or an IPv6 /56, `meshnat.limits.network_of`): UDP requests are rate limited per source IP,
per source network, per IPv6 /48 (four networks' worth) and in total, and queue for answering
with a fair share per network; streams hold slots per peer id, per network and in total. One
network flooding from many identities and addresses is shed cheaply while every other network
is still answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from meshnat.endpoint import Endpoint
from meshnat.errors import RemoteProtocolError, UnexpectedMessage
from meshnat.limits import RELAYED, Claim, SlotLimit, network_of, site_of
from meshnat.ratelimit import RateLimiter
from meshnat.reflection.messages import (
    MsgType,
    ObserveRequest,
    ObserveResponse,
    Transport,
)
from meshnat.wire import decode, encode, frame_datagram, unframe_datagram
from meshnat.wire.error_response import ErrorCode, ErrorResponse

_network_of = lru_cache(maxsize=4096)(network_of)
"""`network_of`, remembered for the addresses seen most recently: it runs for every datagram."""

_site_of = lru_cache(maxsize=4096)(site_of)

_REQUEST_HEAD = bytes([0x00, 0x01, 0x01, MsgType.OBSERVE_REQUEST])
"""After the map header, `0: 1` (version) and `1: 1` (type): how meshnat encodes a request."""

@dataclass(frozen=True, slots=True)
class ReflectionStatistics:
    served: int
    rate_limited: int
    malformed: int
    dropped: int
    tracked_keys: int
    streams_refused: int = 0
    """Streams refused a slot (per peer, per network or in total)."""
    queue_refused: int = 0
    """Datagrams not queued because their network held its share of the queue."""


class ReflectorCore:
    """Answers observe requests; one instance per reflection service."""

    def __init__(self, *, rate: float, burst: int, max_keys: int,
                 network_rate: float = 40.0, network_burst: int = 80,
                 total_rate: float = 2000.0, total_burst: int = 2000,
                 max_streams: int = 64, max_streams_per_peer: int = 4,
                 max_streams_per_network: int = 16,
                 udp_queue: int = 256, udp_queue_per_network: int = 16) -> None:
        """`rate`/`burst` per peer id (streams) and per source IP (UDP), `network_*` per
        source network and `total_*` over all (UDP); slots for streams and for queued
        datagrams per peer, per network and in total (`ReflectionConfig` has the defaults)."""
        self._peers = RateLimiter(rate=rate, burst=burst, max_keys=max_keys)
        self._ips = RateLimiter(rate=rate, burst=burst, max_keys=max_keys)
        self._networks = RateLimiter(rate=network_rate, burst=network_burst, max_keys=max_keys)
        # an IPv6 /48 (256 /56 networks, one customer) gets four networks' rate, not 256
        self._sites = RateLimiter(rate=4 * network_rate, burst=4 * network_burst,
                                  max_keys=max_keys)
        self._total = RateLimiter(rate=total_rate, burst=total_burst, max_keys=1)
        self._streams = SlotLimit(total=max_streams, per_peer=max_streams_per_peer,
                                  per_network=max_streams_per_network)
        self._queue = SlotLimit(total=udp_queue, per_peer=udp_queue_per_network,
                                per_network=udp_queue_per_network)
        self.served = self.rate_limited = self.malformed = self.dropped = 0

    # --- streams -------------------------------------------------------------------------------

    def open_stream(self, peer: str, observed: Endpoint | None) -> Claim | None:
        """A slot for a stream from `peer` arriving from `observed` (None: over a relay), or
        None when the peer, its network or the reflector holds its share already."""
        network = RELAYED if observed is None else _network_of(observed.ip)
        return self._streams.acquire(peer, network)

    def close_stream(self, claim: Claim) -> None:
        self._streams.release(claim)

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

    # --- datagrams -----------------------------------------------------------------------------

    def enqueue_datagram(self, src: Endpoint) -> Claim | None:
        """A place in the answer queue for a datagram from `src`, or None (counted as dropped)
        when its network holds its share of the queue or the queue is full."""
        network = _network_of(src.ip)
        claim = self._queue.acquire(network, network)  # per network only: its fair share
        if claim is None:
            self.dropped += 1
        return claim

    def dequeue_datagram(self, claim: Claim) -> None:
        self._queue.release(claim)

    def answer_datagram(self, data: bytes, src: Endpoint, now: float) -> bytes | None:
        """The datagram to send back to `src`, or None for silence."""
        payload = unframe_datagram(data)
        if payload is None:
            return None
        # a request as meshnat encodes it is charged before it is decoded: a flood is shed
        # for the price of the rate check (any other encoding is charged after decoding)
        charged = payload[1:5] == _REQUEST_HEAD
        if charged and not self._allow(src, now):
            return None
        try:
            request = decode(payload, ObserveRequest)
        except UnexpectedMessage:  # another meshnat message on the shared socket: not ours
            return None
        except RemoteProtocolError:
            self.malformed += 1
            return None
        if not charged and not self._allow(src, now):
            return None
        reply = frame_datagram(encode(ObserveResponse(request.txid, src, Transport.UDP)))
        if len(reply) > len(data):  # never amplify: an unpadded request gets silence
            self.malformed += 1
            return None
        self.served += 1
        return reply

    def _allow(self, src: Endpoint, now: float) -> bool:
        """A token from the source IP's, its network's, its IPv6 site's (/48) and the total
        bucket, in that order."""
        network = _network_of(src.ip)
        site = _site_of(network)
        if (self._ips.allow(src.ip, now) and self._networks.allow(network, now)
                and (site == network or self._sites.allow(site, now))
                and self._total.allow(None, now)):
            return True
        self.rate_limited += 1
        return False

    def note_malformed(self) -> None:
        self.malformed += 1

    def note_dropped(self) -> None:
        self.dropped += 1

    def statistics(self) -> ReflectionStatistics:
        return ReflectionStatistics(
            self.served, self.rate_limited, self.malformed, self.dropped,
            len(self._peers) + len(self._ips) + len(self._networks) + len(self._sites),
            sum(self._streams.refused.values()), sum(self._queue.refused.values()),
        )
