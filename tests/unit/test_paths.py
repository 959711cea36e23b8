"""Path labels and the best-connection rule; what a discovery round says about the mapping;
circuit addresses; the chat events' JSON (the `meshnat chat --json` lines)."""

from __future__ import annotations

import json
from ipaddress import ip_address

import base58
import multiaddr
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnat._libp2p import is_circuit_addr, peer_id_of
from meshnat.chat.events import (
    Delivery,
    LineHeard,
    LineSent,
    Member,
    MemberConnected,
    MemberPunched,
    SendFailed,
)
from meshnat.cli.commands import parse_peer_id
from meshnat.discovery import Consensus
from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError
from meshnat.paths import PathKind, best_first_key
from meshnat.punch.messages import MappingHint

PEER = "12D3KooWRsnkwqjeJ6uWNS6e6aZiLyMeHYkdpPAsiZS6gkwtfDHV"


def test_path_labels_are_the_json_strings() -> None:
    assert [json.dumps(k) for k in PathKind] == ['"direct"', '"punched"', '"mapped"',
                                                 '"relayed"']
    assert f"{PathKind.PUNCHED}" == "punched"
    assert [k.is_direct for k in PathKind] == [True, True, True, False]


def test_direct_and_punched_connections_come_before_relayed_ones_in_swarm_order() -> None:
    swarm_order = [(PathKind.RELAYED, 0), (PathKind.PUNCHED, 1), (PathKind.RELAYED, 2),
                   (PathKind.DIRECT, 3)]
    ranked = sorted(swarm_order, key=lambda c: best_first_key(c[0]))
    assert [i for _, i in ranked] == [1, 3, 0, 2]


def test_a_doubtful_punched_connection_comes_after_a_relayed_one() -> None:
    """A punched path its health check probes after a suspected failure (a flushed NAT
    binding, say) may be dead: new streams take the relay while there is one."""
    swarm_order = [(PathKind.PUNCHED, True, 0), (PathKind.RELAYED, False, 1),
                   (PathKind.DIRECT, False, 2)]
    ranked = sorted(swarm_order, key=lambda c: best_first_key(c[0], doubtful=c[1]))
    assert [i for *_, i in ranked] == [2, 1, 0]


def _round(address: str | None, *, endpoint_dependent: bool) -> Consensus:
    endpoint = Endpoint.parse(address) if address else None
    return Consensus("udp", endpoint, ip_address("198.51.100.7"), (), 3, (),
                     endpoint_dependent)


@pytest.mark.parametrize(("address", "endpoint_dependent", "hint"), [
    ("198.51.100.7:4001", False, MappingHint.ENDPOINT_INDEPENDENT),
    ("198.51.100.7:4001", True, MappingHint.ENDPOINT_INDEPENDENT),  # an agreed address wins
    (None, True, MappingHint.ENDPOINT_DEPENDENT),
    (None, False, MappingHint.UNKNOWN),
])
def test_the_mapping_hint_follows_the_round(address: str | None, endpoint_dependent: bool,
                                            hint: MappingHint) -> None:
    consensus = _round(address, endpoint_dependent=endpoint_dependent)
    assert MappingHint.from_consensus(consensus) is hint


def test_circuit_addresses_are_recognised_by_protocol() -> None:
    relay = f"/ip4/198.51.100.1/tcp/4001/p2p/{PEER}"
    assert is_circuit_addr(multiaddr.Multiaddr(f"{relay}/p2p-circuit/p2p/{PEER}"))
    assert not is_circuit_addr(multiaddr.Multiaddr(relay))
    assert not is_circuit_addr(multiaddr.Multiaddr("/ip4/198.51.100.1/udp/4001/quic-v1"))


def test_a_bad_peer_id_is_a_short_config_error() -> None:
    assert str(parse_peer_id(PEER)) == PEER
    for bad in ("12D3KooWfake", "x" * 30_000, "None", PEER[:-1], None, 10**400):
        with pytest.raises(ConfigError, match="not a peer id") as caught:
            parse_peer_id(bad)
        assert len(str(caught.value)) < 80


@given(st.binary(max_size=50) | st.binary(max_size=48).map(lambda b: bytes([0, len(b)]) + b))
def test_only_multihashes_of_keys_are_peer_ids_and_nothing_raises(raw: bytes) -> None:
    text = base58.b58encode(raw).decode()
    assert peer_id_of(text) is None or str(peer_id_of(text)) == text


def test_chat_events_print_the_json_lines_of_meshnat_chat() -> None:
    bob = Member(PEER, "bob")
    assert json.dumps(MemberConnected(bob, PathKind.RELAYED, "tcp").to_json()) == (
        f'{{"event": "peer-connected", "peer": "{PEER}", "name": "bob", "path": "relayed", '
        '"transport": "tcp"}')
    assert json.dumps(MemberPunched(bob, "udp").to_json()) == (
        f'{{"event": "path-upgraded", "peer": "{PEER}", "name": "bob", "path": "punched", '
        '"transport": "udp"}')
    assert json.dumps(LineHeard(bob, "hi", PathKind.DIRECT, "tcp").to_json()) == (
        f'{{"event": "message", "peer": "{PEER}", "name": "bob", "text": "hi", '
        '"path": "direct", "transport": "tcp"}')
    sent = LineSent("hi", (Delivery(bob, PathKind.PUNCHED),), (SendFailed(bob, "gone"),))
    assert json.dumps(sent.to_json()) == (
        f'{{"event": "sent", "text": "hi", "to": [{{"peer": "{PEER}", "name": "bob", '
        '"path": "punched"}]}')
    assert json.dumps(sent.failed[0].to_json()) == (
        f'{{"event": "send-failed", "peer": "{PEER}", "name": "bob", "error": "gone"}}')
