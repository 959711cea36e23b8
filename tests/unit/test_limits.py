"""SlotLimit: bounded per peer id, per network and in total; network_of groups /24 and /56."""

from ipaddress import ip_address

import pytest

from meshnat.errors import ConfigError
from meshnat.limits import SlotLimit, network_of


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
                                    dict(total=4, per_peer=5, per_network=1),
                                    dict(total=4, per_peer=1, per_network=0)])
def test_bad_bounds_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        SlotLimit(**kwargs)
