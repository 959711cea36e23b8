"""Majority vote: tables of cases and the never-a-lie property."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnat.discovery.consensus import Observation, conclude, decide
from meshnat.endpoint import Endpoint
from meshnat.errors import InsufficientResponses, NoConsensus

HONEST = Endpoint(ip_address("198.18.0.20"), 4001)


def ep(text: str) -> Endpoint:
    return Endpoint.parse(text)


def obs(group: str, observed: Endpoint, reflector: str | None = None) -> Observation:
    return Observation(reflector or f"peer-{group}-{observed}", group, observed, 0.01)


def test_unanimous_reflectors_confirm_the_address() -> None:
    c = decide("udp", [obs(g, HONEST) for g in "abc"])
    assert c.address == HONEST and c.votes == 3 and c.voters == 3 and not c.dissent
    assert c.ip == HONEST.ip and not c.endpoint_dependent


def test_a_lying_minority_is_outvoted_and_reported_as_dissent() -> None:
    liar = ep("203.0.113.9:9")
    c = decide("udp", [obs("a", HONEST), obs("b", HONEST), obs("c", liar)])
    assert c.address == HONEST
    assert [o.observed for o in c.dissent] == [liar]
    assert dict(c.tally) == {HONEST: 2, liar: 1}


def test_many_peer_ids_on_one_address_vote_once() -> None:
    liar = ep("203.0.113.9:9")
    sybils = [obs("10.9.9.9", liar, reflector=f"sybil{i}") for i in range(10)]
    c = decide("udp", [*sybils, obs("a", HONEST), obs("b", HONEST)])
    assert c.voters == 3 and c.address == HONEST


def test_a_group_that_contradicts_itself_casts_no_vote_but_counts() -> None:
    split = [obs("a", HONEST, "p1"), obs("a", ep("1.2.3.4:5"), "p2")]
    c = decide("udp", [*split, obs("b", HONEST)])
    assert c.voters == 2 and c.address is None  # 1 of 2 groups is no strict majority
    assert dict(c.tally) == {HONEST: 1}
    c = decide("udp", [*split, obs("b", HONEST), obs("c", HONEST)])
    assert c.voters == 3 and c.address == HONEST and c.votes == 2


@pytest.mark.parametrize("votes", [
    ["198.18.0.20:4001", "203.0.113.9:9"],                                   # tie of two
    ["198.18.0.20:4001", "198.18.0.20:4001", "1.1.1.1:1", "1.1.1.1:1"],      # tie of four
    ["198.18.0.20:4001", "1.1.1.1:1", "2.2.2.2:2"],                          # plurality only
])
def test_no_strict_majority_means_no_address(votes: list[str]) -> None:
    c = decide("udp", [obs(str(i), ep(v)) for i, v in enumerate(votes)])
    assert c.address is None


def test_same_ip_with_different_ports_everywhere_reads_as_endpoint_dependent_mapping() -> None:
    c = decide("udp", [obs(g, ep(f"198.18.0.20:{p}")) for g, p in zip("abc", (1000, 2000, 3000),
                                                                         strict=True)])
    assert c.address is None and c.ip == HONEST.ip and c.endpoint_dependent


def test_liars_that_disagree_on_the_ip_do_not_look_like_a_symmetric_nat() -> None:
    c = decide("udp", [obs("a", ep("1.1.1.1:1")), obs("b", ep("2.2.2.2:2")), obs("c", HONEST)])
    assert c.address is None and c.ip is None and not c.endpoint_dependent


endpoints = st.builds(Endpoint, st.ip_addresses(v=4), st.integers(1, 65535))


@given(honest=st.integers(1, 8), liars=st.data(), lies=st.lists(endpoints, min_size=1, max_size=4))
def test_liars_fewer_than_half_the_groups_can_never_move_the_answer(
    honest: int, liars: st.DataObject, lies: list[Endpoint]
) -> None:
    n_liars = liars.draw(st.integers(0, honest))  # up to a tie
    # liars may collude (all the same lie) or not, and may each run many peer ids
    votes = [obs(f"h{i}", HONEST) for i in range(honest)]
    for i in range(n_liars):
        for j in range(liars.draw(st.integers(1, 3))):
            votes.append(obs(f"l{i}", liars.draw(st.sampled_from(lies)), f"l{i}-{j}"))
    shuffled = liars.draw(st.permutations(votes))
    c = decide("udp", shuffled)
    assert c.address in (HONEST, None)  # never a lie, even at a tie
    if n_liars < honest:  # liars are fewer than half the groups: the honest answer wins
        assert c.address == HONEST


@given(st.lists(st.tuples(st.sampled_from("abcdefg"), endpoints), max_size=20))
def test_an_address_always_has_a_strict_majority_of_the_groups(pairs: list) -> None:
    c = decide("udp", [obs(g, e, f"{g}{i}") for i, (g, e) in enumerate(pairs)])
    if c.address is not None:
        assert 2 * c.votes > c.voters
    assert c.voters == len({g for g, _ in pairs})


# --- adversarial: liars of any family and port, holding fewer than half the groups ----------

any_endpoint = st.builds(Endpoint, st.ip_addresses(), st.integers(1, 65535))


@given(honest=any_endpoint, n_honest=st.integers(1, 7), data=st.data())
def test_liars_of_any_family_fewer_than_half_the_groups_never_move_or_break_discovery(
    honest: Endpoint, n_honest: int, data: st.DataObject
) -> None:
    n_liars = data.draw(st.integers(0, n_honest), label="liar groups")  # a tie at most
    lies = data.draw(st.lists(any_endpoint | st.just(honest), min_size=1, max_size=5),
                     label="lies")
    observations = [obs(f"h{i}", honest, f"h{i}") for i in range(n_honest)]
    for i in range(n_liars):  # each liar group: many peer ids, agreeing with itself or not
        for j in range(data.draw(st.integers(1, 3))):
            observations.append(obs(f"l{i}", data.draw(st.sampled_from(lies)), f"l{i}-{j}"))
    observations = data.draw(st.permutations(observations), label="order")
    min_responses = data.draw(st.integers(1, len(observations) + 1), label="min_responses")
    try:
        consensus = conclude("udp", observations, min_responses=min_responses,
                             asked=len(observations))
    except InsufficientResponses:
        assert len(observations) < min_responses
        return
    except NoConsensus as exc:
        assert exc.consensus.address is None
        assert n_liars == n_honest  # only a tie keeps the honest answer from winning
        return
    assert consensus.address == honest  # never a lie
    assert consensus.tally == decide("udp", reversed(observations)).tally  # order-independent
