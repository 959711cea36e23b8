"""Relay ranking: reachable only; public first; then lower RTT; stable otherwise."""

from __future__ import annotations

from meshnat.relay.policy import RelayCandidate, rank_relays


def test_unreachable_relays_are_dropped_and_the_rest_ranked_by_reachability_then_rtt() -> None:
    ranked = rank_relays([
        RelayCandidate("slow", 0.200), RelayCandidate("dead", None, public=True),
        RelayCandidate("natted", 0.001, public=False), RelayCandidate("fast", 0.010),
        RelayCandidate("public", 0.300, public=True), RelayCandidate("tie", 0.010),
    ])
    assert [c.name for c in ranked] == ["public", "fast", "tie", "slow", "natted"]


def test_no_candidates_no_ranking() -> None:
    assert rank_relays([]) == [] == rank_relays([RelayCandidate("dead", None)])
