"""SendBudget and punch payment: what may go to an address the peer has not proven."""

from __future__ import annotations

import ast
import itertools
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError
from meshnat.punch.messages import MAX_PADDING, MappingHint, Padding
from meshnat.punch.payment import (
    MAX_PADDING_FRAMES,
    PROBE_WIRE_BYTES,
    easy_side_pays,
    hard_side_pays,
    padding_frames,
    padding_owed,
    probes_allowed,
)
from meshnat.traversal.budget import SendBudget, tcp_dial_bytes, udp_wire_bytes
from meshnat.traversal.core import UnprovenPacer
from meshnat.wire import decode, encode, frame_datagram

VICTIM, PEER = IPv4Address("192.0.2.7"), IPv4Address("198.51.100.1")


def test_an_unproven_ip_gets_at_most_three_times_what_was_paid() -> None:
    budget = SendBudget(paid=100)
    assert budget.allowance(VICTIM) == 300
    sent = sum(58 for _ in range(10) if budget.spend(VICTIM, 58))
    assert sent == 290 and budget.withheld == 5
    assert budget.sent_unproven(VICTIM) == 290
    assert budget.spend(PEER, 300) and not budget.spend(PEER, 1)  # each IP its own allowance


def test_a_proven_ip_is_unbounded_and_paying_more_raises_the_allowance() -> None:
    budget = SendBudget(paid=10, proven=[PEER])
    assert budget.allowance(PEER) is None and budget.spend(PEER, 10**6)
    assert not budget.spend(VICTIM, 31)
    budget.pay(10)
    assert budget.spend(VICTIM, 31)
    assert budget.prove(VICTIM) and not budget.prove(VICTIM)
    stats = budget.statistics()
    assert (stats.paid, stats.proven, stats.unproven_bytes, stats.withheld) == (20, 2, 31, 1)


@given(paid=st.integers(0, 100_000),
       sizes=st.lists(st.tuples(st.integers(1, 2000), st.booleans()), max_size=200))
def test_never_more_than_three_times_paid_to_any_unproven_ip(
        paid: int, sizes: list[tuple[int, bool]]) -> None:
    budget = SendBudget(paid=paid)
    for size, v6 in sizes:
        budget.spend(IPv6Address("2001:db8::1") if v6 else VICTIM, size)
    assert budget.statistics().max_unproven_bytes <= 3 * paid


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ConfigError):
        SendBudget(paid=-1)


def test_wire_sizes_count_headers() -> None:
    assert udp_wire_bytes(30, VICTIM) == 58
    assert udp_wire_bytes(30, IPv6Address("::1")) == 78
    assert tcp_dial_bytes(VICTIM) == 240


def test_only_birthday_probing_is_paid_for_and_the_amounts_cover_the_spray() -> None:
    hard, easy, unknown = (MappingHint.ENDPOINT_DEPENDENT, MappingHint.ENDPOINT_INDEPENDENT,
                           MappingHint.UNKNOWN)
    assert padding_owed(unknown, easy, max_probes=2048, sockets=256) == 0
    assert padding_owed(hard, hard, max_probes=2048, sockets=256) == 0
    owed = padding_owed(hard, easy, max_probes=2048, sockets=256)
    assert owed == hard_side_pays(2048) and 3 * owed >= 2048 * PROBE_WIRE_BYTES
    assert padding_owed(easy, hard, max_probes=2048, sockets=256) == easy_side_pays(256)
    assert probes_allowed(3 * owed, 2048) == 2048
    assert probes_allowed(None, 7) == 7 and probes_allowed(57, 10) == 0


def test_padding_frames_fit_the_stream_cap_and_decode() -> None:
    frames = padding_frames(bytes(16), hard_side_pays(2048))
    assert sum(len(f.padding) for f in frames) >= hard_side_pays(2048)
    assert len(frames) <= MAX_PADDING_FRAMES
    for frame in frames:
        data = encode(frame)
        assert len(data) <= 4096 and decode(data, Padding) == frame
    assert len(padding_frames(bytes(16), 10**9)) == MAX_PADDING_FRAMES
    assert all(len(f.padding) <= MAX_PADDING for f in frames)
    assert len(frame_datagram(b"")) + 26 + 28 == PROBE_WIRE_BYTES


@pytest.mark.parametrize("module", ["traversal/budget.py", "punch/payment.py"])
def test_the_budget_modules_are_pure(module: str) -> None:
    path = Path(__file__).parents[2] / "src" / "meshnat" / module
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"trio", "libp2p"}


def test_unproven_candidates_are_probed_with_backoff_and_proven_ones_every_tick() -> None:
    pacer = UnprovenPacer(first_gap=0.05, max_gap=0.5)
    remote = Endpoint(VICTIM, 4001)
    ticks = [round(i * 0.05, 2) for i in range(60)]  # 3 s of 50 ms ticks
    sent = [t for t in ticks if pacer.due(remote, False, t)]
    assert sent[:5] == [0.0, 0.05, 0.15, 0.35, 0.75]  # ICE Ta, doubling
    assert all(b - a <= 0.5 + 1e-9 for a, b in itertools.pairwise(sent))
    assert len(sent) == 9  # against 60 at the full rate
    assert all(pacer.due(remote, True, t) for t in ticks)


def test_the_unproven_ips_of_one_network_share_one_allowance() -> None:
    budget = SendBudget(paid=100)
    hosts = [IPv4Address(f"192.0.2.{i}") for i in range(2, 10)]  # eight hosts of one /24
    sent = sum(100 for ip in hosts if budget.spend(ip, 100))
    assert sent == 300 and budget.withheld == 5
    assert all(budget.allowance(ip) == 0 for ip in hosts)
    assert budget.statistics().max_unproven_bytes == 300
    assert budget.allowance(IPv4Address("192.0.3.2")) == 300  # the next /24 is another network
    v6 = [IPv6Address(f"2001:db8:0:{i:x}::1") for i in range(0, 0x100, 0x20)]  # one /56
    assert sum(100 for ip in v6 if budget.spend(ip, 100)) == 300


def test_an_ipv4_mapped_address_shares_its_ipv4_address_allowance_and_proof() -> None:
    budget = SendBudget(paid=100)
    mapped = IPv6Address(f"::ffff:{VICTIM}")
    assert budget.spend(VICTIM, 300)
    assert budget.allowance(mapped) == 0 and not budget.spend(mapped, 1)
    budget.prove(mapped)
    assert budget.is_proven(VICTIM) and budget.allowance(VICTIM) is None
