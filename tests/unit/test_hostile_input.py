"""Hostile input costs nothing: frames that used to raise the wrong error, expand into gigabytes,
or crash a sort; the CBOR pre-scan's rules; the one rule for possible UDP sources."""

from __future__ import annotations

import time
import tracemalloc
from ipaddress import ip_address

import cbor2
import pytest

from meshnat.discovery.consensus import Observation, decide
from meshnat.endpoint import Endpoint, udp_source
from meshnat.errors import MalformedMessage, RemoteProtocolError
from meshnat.punch.messages import Offer
from meshnat.reflection.messages import ObserveRequest, ObserveResponse
from meshnat.wire import decode
from meshnat.wire.codec import describe
from meshnat.wire.scan import check_frame

TXID = bytes(range(16))
ENVELOPE = b"\xa4\x00\x01\x01\x02\x02\x50" + TXID  # a map of 4 pairs: 0: 1, 1: 2, 2: txid


def head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    return bytes([major << 5 | 25]) + n.to_bytes(2, "big")


def shared_reference_bomb(leaf: int, fan: int) -> bytes:
    """An ObserveResponse whose endpoint is `fan` references to a list of `fan` references to
    one shared byte string of `leaf` bytes (CBOR tags 28/29): small on the wire, `fan**2 *
    leaf` bytes once expanded."""
    def ref(i: int) -> bytes:
        return b"\xd8\x1d" + head(0, i)
    return (head(5, 7) + b"\x00\x01\x01\x02\x02\x50" + TXID
            + head(1, 0) + b"\xd8\x1c" + head(2, leaf) + bytes(leaf)
            + head(1, 1) + b"\xd8\x1c" + head(4, fan) + ref(0) * fan
            + b"\x08" + head(4, fan) + ref(1) * fan + b"\x09\x00")


# --- the frames measured on main ---------------------------------------------------------------

def test_a_4400_digit_integer_where_a_port_belongs_is_a_remote_protocol_error() -> None:
    frame = cbor2.dumps({0: 1, 1: 2, 2: TXID, 8: [bytes(4), 10**4400], 9: 0})
    with pytest.raises(MalformedMessage) as caught:
        decode(frame, ObserveResponse)
    assert len(str(caught.value)) < 120


def test_an_endpoint_never_formats_the_hostile_value() -> None:
    for value in ([bytes(4), 10**5000], [bytes(4), [b"x" * 4000] * 1000], "y" * 10_000):
        with pytest.raises(MalformedMessage) as caught:
            Endpoint.from_wire(value)
        assert len(str(caught.value)) < 120


def test_a_frame_of_shared_references_is_refused_before_it_expands() -> None:
    frame = shared_reference_bomb(leaf=1000, fan=100)  # 1.6 KiB, 10 MB expanded, 40 MB as repr
    assert len(frame) < 2048
    tracemalloc.start()
    try:
        started = time.process_time()
        with pytest.raises(MalformedMessage, match="tag"):
            decode(frame, ObserveResponse)
        cpu = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert cpu < 0.5  # CPU time of this process, not wall clock: ~0.05 ms when refused early


def test_consensus_orders_liars_of_both_address_families_against_honest_reflectors() -> None:
    honest = Endpoint.parse("198.18.0.20:4001")
    observations = [Observation(f"h{i}", f"h{i}", honest, 0.01) for i in range(3)]
    observations += [Observation("l4", "l4", Endpoint.parse("203.0.113.9:9"), 0.01),
                     Observation("l6", "l6", Endpoint.parse("[2001:db8::9]:9"), 0.01)]
    consensus = decide("udp", observations)
    assert consensus.address == honest
    assert [ep for ep, _ in consensus.tally] == [honest, Endpoint.parse("203.0.113.9:9"),
                                                 Endpoint.parse("[2001:db8::9]:9")]


def test_endpoints_are_totally_ordered_ipv4_first_then_by_address_and_port() -> None:
    mixed = [Endpoint.parse(t) for t in ("[::1]:1", "10.0.0.1:2", "[::1]:9", "9.0.0.1:7",
                                         "10.0.0.1:1")]
    assert [str(e) for e in sorted(mixed)] == ["9.0.0.1:7", "10.0.0.1:1", "10.0.0.1:2",
                                               "[::1]:1", "[::1]:9"]
    v4, v6 = Endpoint.parse("255.255.255.255:65535"), Endpoint.parse("[::]:1")
    assert v4 < v6 and v6 > v4 and v4 <= v4 and not v6 <= v4 and v6 >= v6


# --- the pre-scan ------------------------------------------------------------------------------

@pytest.mark.parametrize(("tail", "rule"), [
    (b"\xc2\x41\x01", "tag"),                    # bignum 2
    (b"\xc3\x41\x01", "tag"),                    # negative bignum 3
    (b"\xd8\x1c\x00", "tag"),                    # shareable 28
    (b"\xd8\x1d\x00", "tag"),                    # shared reference 29
    (b"\xc1\x00", "tag"),                        # epoch date
    (b"\xf9\x7e\x00", "float"),                  # half-precision NaN
    (b"\xfa\x00\x00\x00\x00", "float"),          # single
    (b"\xfb" + bytes(8), "float"),               # double
    (b"\xf5", "simple"), (b"\xf4", "simple"),    # true, false (meshnat sends 0/1)
    (b"\xf6", "simple"), (b"\xf7", "simple"),    # null, undefined
    (b"\xf0", "simple"), (b"\xf8\x20", "simple"),
    (b"\xff", "simple"),                         # a stray break
    (b"\x5f\x41\x01\xff", "indefinite"),         # indefinite byte string
    (b"\x9f\xff", "indefinite"),                 # indefinite array
    (b"\x1c", "reserved"), (b"\x3d", "reserved"), (b"\x5e", "reserved"),
    (b"\x5a\xff\xff\xff\xff", "longer than the frame"),   # a 4 GiB byte string
    (b"\x7b" + b"\xff" * 8, "longer than the frame"),      # a 2**64-byte text string
    (b"\x9b" + b"\x7f" + b"\xff" * 7, "more items"),       # 2**63 array items
    (b"\xba\x00\x01\x00\x00\x00", "more items"),           # 65,536 map pairs, 1 byte left
    (b"\x81\x81\x81\x81\x00", "deeper"),                   # map + 4 arrays = 5 levels
    (b"\x1b\xff", "truncated"),                            # 8-byte integer, 1 byte given
    (b"", "truncated"),
])
def test_the_prescan_refuses_what_meshnat_does_not_use(tail: bytes, rule: str) -> None:
    frame = ENVELOPE + b"\x08" + tail  # {0: 1, 1: 2, 2: txid, 8: tail}
    with pytest.raises(MalformedMessage, match=rule):
        check_frame(frame, max_depth=4)
    with pytest.raises(MalformedMessage):
        decode(frame, ObserveResponse)


def test_the_prescan_accepts_every_shape_meshnat_sends() -> None:
    check_frame(cbor2.dumps({0: 1, 1: 2, 2: TXID, 8: [[bytes(16), 65535]], 9: -(2**64),
                             10: "text", 11: 2**64 - 1, 12: {}}), max_depth=4)
    check_frame(cbor2.dumps({0: [[[0]]]}), max_depth=4)
    with pytest.raises(MalformedMessage, match="trailing"):
        check_frame(cbor2.dumps({0: 1}) + b"\x00", max_depth=4)


@pytest.mark.parametrize("frame", [
    cbor2.dumps({0: 1, 1: 1, 2: TXID, **{k: 0 for k in range(100, 900)}}),  # 800 unknown keys
    cbor2.dumps({0: 1, 1: 1, 2: TXID, 10: "x" * 3000}),                    # a long wrong field
])
def test_error_messages_stay_short_whatever_the_frame_holds(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(frame, ObserveRequest)
    assert len(str(caught.value)) < 120


def test_a_duplicate_key_error_does_not_quote_the_key_at_length() -> None:
    key = "k" * 2000
    frame = b"\xa2" + cbor2.dumps(key) + b"\x00" + cbor2.dumps(key) + b"\x00"
    with pytest.raises(MalformedMessage) as caught:
        decode(frame, Offer)
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize(("value", "text"), [
    (7, "7"), (10**400, "an integer of 1329 bits"), (True, "a bool"), ("ab", "'ab'"),
    ("z" * 100, "'zzzzzzzzzzzzzzzz'... (100 long)"), ([1, 2], "a list of 2 items"),
    ({1: 2}, "a dict of 1 items"), (1.5, "a float"),
])
def test_describe_shows_a_few_bytes_at_most(value: object, text: str) -> None:
    assert describe(value) == text


# --- possible UDP sources ----------------------------------------------------------------------

@pytest.mark.parametrize(("addr", "expected"), [
    (("198.51.100.7", 4001), "198.51.100.7:4001"),
    (("::ffff:198.51.100.7", 4001, 0, 0), "198.51.100.7:4001"),
    (("2001:db8::1", 443, 0, 0), "[2001:db8::1]:443"),
    (("fe80::1%eth0", 5, 0, 2), "[fe80::1]:5"),
    (("127.0.0.1", 9), "127.0.0.1:9"),
    (("198.51.100.7", 0), None),                 # port 0
    (("0.0.0.0", 4001), None), (("0.1.2.3", 4001), None), (("::", 4001, 0, 0), None),
    (("::ffff:0.0.0.0", 4001, 0, 0), None),
    (("224.0.0.251", 5353), None), (("239.255.255.250", 1900), None),
    (("ff02::1", 547, 0, 0), None), (("255.255.255.255", 67), None),
    (("not an ip", 1), None), (("198.51.100.7", True), None), (("198.51.100.7",), None),
    (None, None), (("198.51.100.7", 65536), None),
])
def test_udp_source_refuses_every_impossible_source(addr: object, expected: str | None) -> None:
    source = udp_source(addr)
    assert (None if source is None else str(source)) == expected


def test_udp_source_agrees_with_the_endpoint_it_builds() -> None:
    assert udp_source(("192.0.2.1", 80)) == Endpoint(ip_address("192.0.2.1"), 80)
