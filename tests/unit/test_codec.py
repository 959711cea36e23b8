"""The wire codec: golden frames, strictness, and the fuzz invariant (only RemoteProtocolError)."""

from __future__ import annotations

import contextlib
from ipaddress import ip_address
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnat.classify.messages import (
    InfoRequest,
    InfoResponse,
    ProbeAck,
    ProbeDatagram,
    ProbeRequest,
)
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    LocalProtocolError,
    MalformedMessage,
    MessageTooLarge,
    RemoteProtocolError,
    UnexpectedMessage,
    UnsupportedVersion,
)
from meshnat.mesh.messages import DialBackProof, DialBackRequest, DialBackResponse
from meshnat.punch.messages import MappingHint, Offer, Probe, Sync
from meshnat.reflection.messages import (
    ObserveRequest,
    ObserveResponse,
    Transport,
)
from meshnat.traversal.messages import Offer as TraversalOffer
from meshnat.traversal.messages import Probe as TraversalProbe
from meshnat.traversal.messages import Take, TakeAccept
from meshnat.tunnel.messages import OpenRefused, OpenTunnel, RefusalCode, TunnelOpened
from meshnat.wire import (
    MAX_DATAGRAM_SIZE,
    MAX_MESSAGE_SIZE,
    decode,
    encode,
    frame_datagram,
    frame_stream,
    unframe_datagram,
)
from meshnat.wire.error_response import ErrorCode, ErrorResponse
from meshnat.wire.frames import encode_uvarint

VECTORS = Path(__file__).parent.parent / "vectors"
TXID = bytes(range(16))
ALL = (ObserveRequest, ObserveResponse, ErrorResponse, InfoRequest, InfoResponse, ProbeRequest,
       ProbeAck, ProbeDatagram, Offer, Sync, Probe, OpenTunnel, TunnelOpened, OpenRefused,
       TraversalOffer, TraversalProbe, Take, TakeAccept)

GOLDEN = {
    "observe_request": ObserveRequest(TXID),
    "observe_request_padded": ObserveRequest(TXID, bytes(4)),
    "observe_response_v4": ObserveResponse(TXID, Endpoint(ip_address("198.18.0.20"), 4001),
                                           Transport.UDP),
    "observe_response_v6": ObserveResponse(TXID, Endpoint(ip_address("2001:db8::1"), 443),
                                           Transport.TCP),
    "reflect_error": ErrorResponse(TXID, ErrorCode.RATE_LIMITED, "too many requests"),
    "classify_info_request": InfoRequest(TXID),
    "classify_info_response": InfoResponse(TXID, 4002),
    "classify_probe_request": ProbeRequest(TXID, Endpoint(ip_address("198.18.0.20"), 4001)),
    "classify_probe_ack": ProbeAck(TXID),
    "classify_probe_datagram": ProbeDatagram(TXID),
    "dialback_request": DialBackRequest(TXID, 4001, 4001),
    "dialback_request_ip": DialBackRequest(TXID, 4001, None, ip_address("11.18.0.10")),
    "dialback_response": DialBackResponse(TXID, True, False),
    "dialback_proof": DialBackProof(TXID),
    "punch_offer": Offer(TXID, (Endpoint(ip_address("198.18.0.20"), 4001),),
                         (Endpoint(ip_address("10.1.0.10"), 4001),),
                         MappingHint.ENDPOINT_INDEPENDENT, public=True, turnaround=1500),
    "punch_offer_dual": Offer(TXID, (Endpoint(ip_address("198.18.0.20"), 4001),
                                     Endpoint(ip_address("2001:db8:1::10"), 4001)),
                              (Endpoint(ip_address("2001:db8:1::10"), 4001),),
                              MappingHint.ENDPOINT_DEPENDENT,
                              mapping6=MappingHint.ENDPOINT_INDEPENDENT),
    "punch_sync": Sync(TXID),
    "punch_probe": Probe(TXID, ack=True),
    "traversal_offer": TraversalOffer(TXID, (Endpoint(ip_address("198.18.0.20"), 40321),
                                             Endpoint(ip_address("10.1.0.10"), 40321))),
    "traversal_probe": TraversalProbe(TXID, ack=True,
                                      observed=Endpoint(ip_address("198.18.0.21"), 51000)),
    "traversal_take": Take(TXID, Endpoint(ip_address("198.18.0.21"), 51000),
                           Endpoint(ip_address("198.18.0.20"), 40321), dial=False),
    "traversal_take_accept": TakeAccept(TXID),
    "tunnel_open": OpenTunnel(TXID, "web"),
    "tunnel_opened": TunnelOpened(TXID),
    "tunnel_refused": OpenRefused(TXID, RefusalCode.NOT_ALLOWED, "peer 12D3KooW may not use 'web'"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_frames_are_produced_byte_for_byte_and_decode_back(name: str) -> None:
    expected = bytes.fromhex((VECTORS / f"{name}.hex").read_text().strip())
    assert encode(GOLDEN[name]) == expected
    assert decode(expected, type(GOLDEN[name])) == GOLDEN[name]


def _raw(obj: object) -> bytes:
    return cbor2.dumps(obj)


@pytest.mark.parametrize(("data", "error"), [
    (_raw({0: 1, 1: 1, 2: TXID}) + b"\x00", MalformedMessage),            # trailing byte
    (_raw({0: 2, 1: 1, 2: TXID}), UnsupportedVersion),                   # future version
    (_raw({0: 1, 1: 2, 2: TXID}), MalformedMessage),                     # response lacks fields
    (_raw({0: 1, 1: 99, 2: TXID}), UnexpectedMessage),                   # unknown type
    (_raw({0: 1, 1: 1, 2: TXID, 50: 0}), MalformedMessage),              # unknown field
    (_raw({0: True, 1: 1, 2: TXID}), MalformedMessage),                  # bool is not an int
    (_raw({0: 1, 1: 1, 2: TXID[:15]}), MalformedMessage),                # short txid
    (_raw({0: 1, 1: 1, 2: TXID, 10: "pad"}), MalformedMessage),          # wrong type
    (_raw({0: 1, 1: 1, 2: TXID, 10: bytes(513)}), MalformedMessage),     # oversize field
    (_raw({"0": 1}), MalformedMessage),                                  # text keys
    (_raw([1, 1, TXID]), MalformedMessage),                              # not a map
    (b"\xbf\x00\x01\xff", MalformedMessage),                             # indefinite map
    (b"\xa2\x00\x01\x00\x01", MalformedMessage),                         # duplicate key
    (_raw({0: [[[[[1]]]]]}), MalformedMessage),                          # nesting deeper than 4
    (b"", MalformedMessage),
    (bytes(MAX_MESSAGE_SIZE + 1), MessageTooLarge),
])
def test_bad_input_raises_the_documented_error(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode(data, ObserveRequest, ObserveResponse, ErrorResponse)


def test_endpoint_with_a_bad_port_or_address_length_is_malformed() -> None:
    for bad in ([bytes(4), 0], [bytes(5), 80], [bytes(4), 70000], [bytes(4), True], "x"):
        frame = _raw({0: 1, 1: 2, 2: TXID, 8: bad, 9: 0})
        with pytest.raises(MalformedMessage):
            decode(frame, ObserveResponse)


@pytest.mark.parametrize(("field", "bad", "good"), [
    *((14, bad, 2) for bad in (None, 3, -1, "1", b"\x01", [1])),
    *((15, bad, 60_000_000) for bad in (None, -1, 60_000_001, "1", b"\x01")),
])
def test_a_punch_offer_without_a_valid_mapping6_or_turnaround_is_malformed(
        field: int, bad: object, good: int) -> None:
    """Field 14 (the IPv6 hint, /meshnat/punch/1.1.0) and field 15 (the responder's
    turnaround in µs, 1.2.0) are required: an Offer of an older version's shape is refused,
    not read as "unknown" or as a turnaround of 0."""
    fields: dict[int, object] = {0: 1, 1: 32, 2: TXID, 8: [], 9: [], 10: 1, 12: 0, 14: 0,
                                 15: 0}
    del fields[field]
    if bad is not None:
        fields[field] = bad
    with pytest.raises(MalformedMessage, match=f"field {field}"):
        decode(_raw(fields), Offer)
    fields[field] = good
    offer = decode(_raw(fields), Offer)
    assert (offer.mapping6, offer.turnaround)[field - 14] == good


def test_encoding_an_oversized_message_is_our_own_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode(ObserveRequest(TXID, bytes(MAX_MESSAGE_SIZE)))


def test_datagram_framing_round_trips_and_rejects_foreign_or_oversized_packets() -> None:
    payload = encode(ObserveRequest(TXID))
    assert unframe_datagram(frame_datagram(payload)) == payload
    assert unframe_datagram(b"\xc0" + bytes(40)) is None  # a QUIC long-header packet
    assert unframe_datagram(frame_datagram(b"")[:3]) is None
    with pytest.raises(LocalProtocolError):
        frame_datagram(bytes(MAX_DATAGRAM_SIZE))


@pytest.mark.parametrize(("value", "encoded"), [(0, "00"), (1, "01"), (127, "7f"),
                                                 (128, "8001"), (300, "ac02"), (4096, "8020")])
def test_uvarint_matches_the_multiformats_spec(value: int, encoded: str) -> None:
    assert encode_uvarint(value).hex() == encoded
    assert frame_stream(b"x" * value) == bytes.fromhex(encoded) + b"x" * value


# --- the fuzz invariant -----------------------------------------------------------------------

def _must_only_raise_remote_errors(data: bytes) -> None:
    for i in range(0, len(ALL), 3):  # decode() takes at most three types
        with contextlib.suppress(RemoteProtocolError):
            decode(data, *ALL[i:i + 3])


@given(st.binary(max_size=MAX_MESSAGE_SIZE + 64))
def test_random_bytes_only_raise_remote_protocol_errors(data: bytes) -> None:
    _must_only_raise_remote_errors(data)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.binary(max_size=40) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.integers(-2, 14) | st.text(max_size=3), children, max_size=6),
    max_leaves=20,
)


@given(cbor_values)
def test_arbitrary_valid_cbor_only_raises_remote_protocol_errors(value: object) -> None:
    _must_only_raise_remote_errors(cbor2.dumps(value))


@given(st.sampled_from(sorted(GOLDEN)), st.data())
def test_mutated_golden_frames_only_raise_remote_protocol_errors(name: str, data: st.DataObject
                                                                 ) -> None:
    frame = bytearray(encode(GOLDEN[name]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    _must_only_raise_remote_errors(bytes(frame[:cut]))
