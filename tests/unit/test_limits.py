"""SlotLimit: bounded per peer id, per network and in total; network_of groups /24 and /56."""

from ipaddress import ip_address

import pytest

from meshnat.errors import ConfigError
from meshnat.limits import SlotLimit, network_of, site_of


def test_networks_are_ipv4_slash_24_and_ipv6_slash_56() -> None:
    assert network_of(ip_address("198.18.7.200")) == "198.18.7.0/24"
    assert network_of(ip_address("198.18.7.1")) == network_of(ip_address("198.18.7.254"))
    assert network_of(ip_address("198.18.8.1")) != network_of(ip_address("198.18.7.1"))
    assert network_of(ip_address("2001:db8:0:ff12::1")) == "2001:db8:0:ff00::/56"


def test_fresh_peer_ids_on_one_network_get_that_networks_share_only() -> None:
    limit = SlotLimit(total=16, per_peer=4, per_network=8)
    claims = [limit.acquire(f"peer{i}", "198.18.7.0/24") for i in range(100)]
    assert sum(c is not None for c in claims) == 8
    assert limit.last_refusal == "network"
    # another network still finds a slot
    assert limit.acquire("newcomer", "198.18.9.0/24") is not None


def test_one_peer_id_is_bounded_even_across_networks() -> None:
    limit = SlotLimit(total=16, per_peer=2, per_network=8)
    got = [limit.acquire("p", f"10.0.{i}.0/24") for i in range(5)]
    assert sum(c is not None for c in got) == 2
    assert limit.last_refusal == "peer"


def test_total_bounds_and_release_gives_the_slot_back() -> None:
    limit = SlotLimit(total=3, per_peer=3, per_network=3)
    claims = [limit.acquire(f"p{i}", f"n{i}") for i in range(3)]
    assert limit.acquire("p9", "n9") is None and limit.last_refusal == "total"
    first = claims[0]
    assert first is not None
    limit.release(first)
    assert limit.held == 2 and limit.held_by_network("n0") == 0 and limit.held_by_peer("p0") == 0
    assert limit.acquire("p9", "n9") is not None
    assert limit.refused["total"] == 1


@pytest.mark.parametrize("kwargs", [dict(total=0, per_peer=1, per_network=1),
                                    dict(total=8, per_peer=1, per_network=4, per_site=2),
                                    dict(total=8, per_peer=1, per_network=1, reserve=8),
                                    dict(total=4, per_peer=5, per_network=1),
                                    dict(total=4, per_peer=1, per_network=0)])
def test_bad_bounds_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        SlotLimit(**kwargs)


def test_ipv6_sites_are_slash_48s_and_an_ipv4_network_is_its_own() -> None:
    assert site_of("198.18.7.0/24") == "198.18.7.0/24"
    assert site_of("2001:db8:0:ff00::/56") == "2001:db8::/48"
    assert site_of("relayed via 2001:db8:0:ff00::/56") == "relayed via 2001:db8::/48"
    assert site_of("relayed") == "relayed"


def test_the_many_slash_56s_of_one_slash_48_hold_half_the_total_at_most() -> None:
    limit = SlotLimit(total=64, per_peer=4, per_network=16)
    one_customer = [f"2001:db8:0:{i:02x}00::/56" for i in range(16)]
    held = [limit.acquire(f"p{i}", net) for i in range(64) for net in one_customer]
    assert sum(c is not None for c in held) == 32
    assert limit.refused["site"] > 0
    assert limit.acquire("honest", "198.18.7.0/24") is not None


def test_the_last_slots_are_kept_for_networks_that_hold_none() -> None:
    limit = SlotLimit(total=16, per_peer=16, per_network=4, per_site=16)
    greedy = [f"10.{i}.0.0/24" for i in range(8)]
    held = [limit.acquire(f"p{i}", net) for i in range(4) for net in greedy]
    assert sum(c is not None for c in held) == 16 - 2  # the reserve: 16 // 8
    assert limit.last_refusal == "reserve"
    assert limit.acquire("a", "198.18.7.0/24") is not None
    assert limit.acquire("b", "198.51.100.0/24") is not None
    assert limit.acquire("c", "203.0.113.0/24") is None and limit.last_refusal == "total"
