"""NAT-PMP (RFC 6886) and PCP (RFC 6887) codecs: golden frames, strict decoding, fuzzing."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnat.errors import MalformedMessage, RemoteProtocolError, UnsupportedVersion
from meshnat.portmap import natpmp, pcp

CLIENT = IPv4Address("10.1.0.10")
NONCE = bytes(range(1, 13))

# Captured from Debian's miniupnpd 2.3.1 in the lab (tests/support/miniupnpd.py).
MINIUPNPD_ADDRESS = bytes.fromhex("00800000" "000001f2" "0b120032")
MINIUPNPD_MAP = bytes.fromhex("00810000" "000001f2" "115c115c" "00000078")
MINIUPNPD_NO_PUBLIC_IP = bytes.fromhex("00800003" "000001d2" "00000000")  # 198.18/15 WAN


def test_natpmp_requests_have_the_rfc_6886_layout() -> None:
    assert natpmp.external_address_request() == b"\x00\x00"
    assert natpmp.map_request("udp", 4444, 4444, 7200).hex() == "00010000115c115c00001c20"
    assert natpmp.map_request("tcp", 4001, 0, 0).hex() == "000200000fa1000000000000"


def test_natpmp_responses_from_miniupnpd_decode() -> None:
    address = natpmp.decode_response(MINIUPNPD_ADDRESS)
    assert address == natpmp.AddressResponse(natpmp.ResultCode.SUCCESS, 498,
                                              IPv4Address("11.18.0.50"))
    mapped = natpmp.decode_response(MINIUPNPD_MAP)
    assert mapped == natpmp.MapResponse(natpmp.Opcode.MAP_UDP, natpmp.ResultCode.SUCCESS, 498,
                                        4444, 4444, 120)
    refused = natpmp.decode_response(MINIUPNPD_NO_PUBLIC_IP)
    assert isinstance(refused, natpmp.AddressResponse)
    assert (refused.result, refused.epoch) == (natpmp.ResultCode.NETWORK_FAILURE, 466)


def test_a_truncated_natpmp_error_response_keeps_its_epoch() -> None:
    # RFC 6886 §3.5: "unsupported version" is 8 bytes: version, opcode, result, epoch.
    answer = natpmp.decode_response(bytes.fromhex("0080000100000010"))
    assert answer.result is natpmp.ResultCode.UNSUPPORTED_VERSION and answer.epoch == 16


@pytest.mark.parametrize("frame", [
    b"", b"\x00", b"\x00\x80\x00", MINIUPNPD_ADDRESS[:-1], MINIUPNPD_MAP + b"\x00",
    bytes.fromhex("0001000000000000"),           # a request
    bytes.fromhex("0083000000000001" "00000000"),  # unknown opcode 3
    bytes.fromhex("0080000900000001" "00000000"),  # unknown result code 9
])
def test_natpmp_rejects_malformed_responses(frame: bytes) -> None:
    with pytest.raises(MalformedMessage):
        natpmp.decode_response(frame)


def test_a_pcp_answer_to_a_natpmp_request_is_another_version() -> None:
    with pytest.raises(UnsupportedVersion):
        natpmp.decode_response(bytes(pcp.map_request(CLIENT, NONCE, "udp", 1, 1, 1)))


def pcp_map_response(result: int = 0, lifetime: int = 7200, epoch: int = 1000,
                     nonce: bytes = NONCE, port: int = 4001, external: int = 4001,
                     options: bytes = b"") -> bytes:
    header = bytes((2, 0x81, 0, result)) + lifetime.to_bytes(4, "big") + \
        epoch.to_bytes(4, "big") + bytes(12)
    ip = bytes(10) + b"\xff\xff" + IPv4Address("11.18.0.10").packed
    return header + nonce + bytes((17, 0, 0, 0)) + port.to_bytes(2, "big") + \
        external.to_bytes(2, "big") + ip + options


def test_pcp_requests_have_the_rfc_6887_layout() -> None:
    announce = pcp.announce_request(CLIENT)
    assert announce.hex() == "02000000" "00000000" + "00" * 10 + "ffff" + "0a01000a"
    request = pcp.map_request(CLIENT, NONCE, "udp", 4001, 4001, 7200)
    assert len(request) == 60
    assert request[:8].hex() == "0201000000001c20" and request[24:36] == NONCE
    assert request[36:40].hex() == "11000000" and request[40:44].hex() == "0fa10fa1"
    assert request[44:].hex() == "00" * 10 + "ffff" + "00000000"  # any external IPv4


def test_pcp_map_response_decodes_with_options_skipped() -> None:
    option = bytes((0x80, 0, 0, 5)) + b"abcde" + bytes(3)  # padded to 4 bytes
    answer = pcp.decode_response(pcp_map_response(options=option))
    assert answer.opcode is pcp.Opcode.MAP and answer.result is pcp.ResultCode.SUCCESS
    assert (answer.lifetime, answer.epoch, answer.nonce) == (7200, 1000, NONCE)
    assert (answer.protocol, answer.internal_port, answer.external_port) == (17, 4001, 4001)
    assert answer.external_ip == IPv4Address("11.18.0.10")


def test_pcp_keeps_ipv6_external_addresses() -> None:
    frame = bytearray(pcp_map_response())
    frame[44:60] = IPv6Address("2001:db8::1").packed
    assert pcp.decode_response(bytes(frame)).external_ip == IPv6Address("2001:db8::1")


@pytest.mark.parametrize("frame", [
    b"\x02\x81", pcp_map_response()[:59], pcp_map_response() + b"\x00",
    pcp_map_response(options=bytes((1, 0, 0, 8)) + bytes(4)),  # option past the end
    pcp_map_response(options=bytes((1, 0))),                    # truncated option header
    pcp_map_response(result=14), pcp_map_response() + bytes(1100),
    bytes(pcp.map_request(CLIENT, NONCE, "udp", 1, 1, 1)),      # a request
])
def test_pcp_rejects_malformed_responses(frame: bytes) -> None:
    with pytest.raises(MalformedMessage):
        pcp.decode_response(frame)


def test_a_natpmp_only_gateway_answers_pcp_with_version_0() -> None:
    with pytest.raises(UnsupportedVersion) as raised:
        pcp.decode_response(bytes.fromhex("0080000100000010"))
    assert raised.value.got == 0


@given(st.integers(0, 255), st.binary(min_size=56, max_size=200))
def test_pcp_decoder_on_plausible_headers(result: int, tail: bytes) -> None:
    frame = bytes((2, 0x81, 0, result)) + tail
    with contextlib.suppress(RemoteProtocolError):  # and nothing else
        pcp.decode_response(frame[: len(frame) - len(frame) % 4])
