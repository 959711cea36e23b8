"""The tunnel's pure parts: service names, allow lists, limits, and strict message decoding."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnat.errors import ConfigError, LocalProtocolError, MalformedMessage, MessageTooLarge
from meshnat.tunnel.core import ANY_PEER, Exposed, Refusal, TunnelConfig, TunnelTable
from meshnat.tunnel.messages import (
    MAX_SERVICE_NAME,
    OpenRefused,
    OpenTunnel,
    RefusalCode,
    TunnelOpened,
    is_service_name,
)
from meshnat.wire import decode

TXID = bytes(range(16))
ALICE, BOB = "12D3KooWAlice", "12D3KooWBob"


def table(**limits: int) -> TunnelTable:
    t = TunnelTable(TunnelConfig(**limits))
    t.expose(Exposed.create("web", ("127.0.0.1", 8080), allow={ALICE}))
    t.expose(Exposed.create("open", ("localhost", 22), allow=ANY_PEER))
    return t


@pytest.mark.parametrize(("peer", "name", "expected"), [
    (ALICE, "web", "127.0.0.1:8080"),
    (BOB, "web", RefusalCode.NOT_ALLOWED),
    (BOB, "open", "localhost:22"),
    (ALICE, "nope", RefusalCode.UNKNOWN_SERVICE),
])
def test_authorize_follows_the_allow_list(peer: str, name: str, expected: object) -> None:
    decision = table().authorize(peer, name)
    if isinstance(decision, Refusal):
        assert decision.code is expected and name in decision.reason
    else:
        assert f"{decision.host}:{decision.port}" == expected


NET1, NET2 = "198.51.100.0/24", "203.0.113.0/24"


def test_per_peer_and_node_limits_count_open_tunnels_and_give_slots_back() -> None:
    t = table(max_tunnels=3, max_tunnels_per_peer=2)
    assert t.acquire(ALICE, NET1) is None and t.acquire(ALICE, NET1) is None
    refusal = t.acquire(ALICE, NET1)
    assert refusal is not None and refusal.code is RefusalCode.PEER_LIMIT
    assert t.acquire(BOB, NET2) is None
    refusal = t.acquire(BOB, NET2)  # BOB holds 1 of 2, but the node holds 3 of 3
    assert refusal is not None and refusal.code is RefusalCode.NODE_LIMIT
    t.release(ALICE, NET1)
    assert t.acquire(BOB, NET2) is None
    stats = t.statistics()
    assert (stats.active, stats.peers, stats.refused, stats.services) == (3, 2, 2, 2)
    for peer, network in ((ALICE, NET1), (BOB, NET2), (BOB, NET2)):
        t.release(peer, network)
    assert t.statistics().active == t.statistics().peers == 0
    with pytest.raises(LocalProtocolError):
        t.release(ALICE, NET1)


def test_a_peer_no_service_allows_takes_no_slot_at_all() -> None:
    t = TunnelTable(TunnelConfig(max_tunnels=4, max_tunnels_per_peer=4))
    t.expose(Exposed.create("web", ("127.0.0.1", 8080), allow={ALICE}))
    strangers = [t.acquire(f"12D3KooWStranger{n}", NET2) for n in range(8)]
    assert all(r is not None and r.code is RefusalCode.NOT_ALLOWED for r in strangers)
    assert t.statistics().active == 0
    assert t.acquire(ALICE, NET1) is None


def test_one_network_cannot_take_every_slot_from_many_identities() -> None:
    t = table(max_tunnels=8, max_tunnels_per_peer=2, max_tunnels_per_network=4)
    flood = [t.acquire(f"12D3KooWFresh{n}", NET2) for n in range(8)]   # ANY_PEER's "open"
    assert sum(r is None for r in flood) == 4
    refused = next(r for r in flood if r is not None)
    assert refused.code is RefusalCode.PEER_LIMIT and "network" in refused.reason
    assert t.acquire(ALICE, NET1) is None                               # another network


def test_services_are_listed_sorted_and_can_be_withdrawn() -> None:
    t = table()
    assert t.services() == ("open", "web")
    t.withdraw("web")
    assert t.services() == ("open",)
    with pytest.raises(LocalProtocolError):
        t.withdraw("web")


@pytest.mark.parametrize(("name", "target", "allow"), [
    ("", ("127.0.0.1", 80), {ALICE}),                # empty name
    ("a b", ("127.0.0.1", 80), {ALICE}),             # space
    ("-x", ("127.0.0.1", 80), {ALICE}),              # must start with a letter or digit
    ("x" * 65, ("127.0.0.1", 80), {ALICE}),          # too long
    ("web", ("127.0.0.1", 0), {ALICE}),              # port 0
    ("web", ("127.0.0.1", 70000), {ALICE}),          # port out of range
    ("web", ("", 80), {ALICE}),                      # no host
    ("web", ("127.0.0.1", 80), set()),               # nobody: say ANY_PEER explicitly
    ("web", ("127.0.0.1", 80), ALICE),               # one string is not a set of ids
])
def test_bad_exposures_are_config_errors(name: str, target: tuple[str, int],
                                          allow: object) -> None:
    with pytest.raises(ConfigError):
        Exposed.create(name, target, allow)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["max_tunnels", "max_tunnels_per_peer",
                                   "max_tunnels_per_network", "chunk_size",
                                   "idle_timeout", "connect_timeout", "open_timeout"])
def test_config_rejects_zero(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        TunnelConfig(**{field: 0})


def _frame(fields: dict[int, object], kind: int = 48) -> bytes:
    return bytes(cbor2.dumps({0: 1, 1: kind, 2: TXID, **fields}))


@pytest.mark.parametrize(("data", "error"), [
    (_frame({8: "we b"}), MalformedMessage),                      # not a service name
    (_frame({8: ""}), MalformedMessage),                          # empty
    (_frame({8: "x" * (MAX_SERVICE_NAME + 1)}), MalformedMessage),  # too long
    (_frame({8: b"web"}), MalformedMessage),                      # bytes, not text
    (_frame({}), MalformedMessage),                               # no service
    (_frame({8: "web", 9: 1}), MalformedMessage),                 # unknown field
    (_frame({8: 99, 9: "x"}, kind=50), MalformedMessage),         # unknown refusal code
    (_frame({8: 2, 9: "x" * 121}, kind=50), MalformedMessage),    # reason too long
    (_frame({8: True, 9: "x"}, kind=50), MalformedMessage),       # bool is not a code
    (_frame({8: 1}, kind=49), MalformedMessage),                  # opened has no fields
    (_frame({8: "web" * 2000}), MessageTooLarge),                 # over 4 KiB
])
def test_malformed_and_oversized_tunnel_messages_are_rejected(data: bytes,
                                                              error: type[Exception]) -> None:
    with pytest.raises(error):
        decode(data, OpenTunnel, TunnelOpened, OpenRefused)


@given(st.text(max_size=80))
def test_a_name_decodes_exactly_when_it_is_a_service_name(name: str) -> None:
    data = _frame({8: name})
    if is_service_name(name):
        assert decode(data, OpenTunnel) == OpenTunnel(TXID, name)
    else:
        with pytest.raises(MalformedMessage):
            decode(data, OpenTunnel)


def test_refusal_codes_read_as_labels() -> None:
    assert RefusalCode.TARGET_TIMEOUT.label == "target-timeout"
