"""Which connected peers this node asks for its address: distinct networks, kept while they
stay (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def choose_reflectors(current: Sequence[str], candidates: Mapping[str, str], *,
                      count: int) -> list[str]:
    """Up to `count` reflectors from `candidates` (peer -> network, best first), one per
    network. Those in `current` that are still candidates stay (a reflector is replaced only
    when it leaves); new ones fill the networks not yet covered."""
    chosen: list[str] = []
    networks: set[str] = set()
    for peer in [*(p for p in current if p in candidates), *candidates]:
        network = candidates[peer]
        if peer in chosen or network in networks:
            continue
        chosen.append(peer)
        networks.add(network)
        if len(chosen) >= count:
            break
    return chosen
