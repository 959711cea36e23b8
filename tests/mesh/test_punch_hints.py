"""A puncher without a configured mapping hint takes it from discovery's last UDP round of
each family (the mesh finds its reflectors at run time, so nothing configures a hint there,
and a cone/symmetric pair without hints never tried birthday probing)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import trio

from meshnat.discovery.consensus import Consensus
from meshnat.endpoint import Endpoint
from meshnat.punch import HolePuncher, PunchConfig
from meshnat.punch.messages import MappingHint
from meshnat.wire import new_txid
from tests.support.fake_reflectors import nodes

SYMMETRIC_V4 = Consensus("udp", None, IPv4Address("203.0.113.7"), (), 3, (), True)
V6_ADDRESS = Endpoint(IPv6Address("2001:db8:1::10"), 4001)
FIREWALLED_V6 = Consensus("udp", V6_ADDRESS, V6_ADDRESS.ip, ((V6_ADDRESS, 3),), 3, (), False)


class RoundsSeen:
    """The two questions the puncher asks of discovery, answered from fixed rounds."""

    def __init__(self, rounds: dict[tuple[str, int], Consensus]) -> None:
        self.rounds = rounds

    def last_round(self, transport: str = "udp", version: int = 4) -> Consensus | None:
        return self.rounds.get((transport, version))

    def latest(self, transport: str = "udp", version: int = 4) -> Consensus | None:
        return None


async def offer_hints(config: PunchConfig) -> tuple[MappingHint, MappingHint]:
    seen = RoundsSeen({("udp", 4): SYMMETRIC_V4, ("udp", 6): FIREWALLED_V6})
    with trio.fail_after(30):
        async with nodes(1) as (node,):
            puncher = await node.mount(HolePuncher(config, discovery=seen))  # type: ignore[arg-type]
            offer = puncher._offer(new_txid())
    return offer.mapping, offer.mapping6


async def test_without_a_configured_hint_the_offer_carries_what_discovery_saw() -> None:
    assert await offer_hints(PunchConfig()) == (MappingHint.ENDPOINT_DEPENDENT,
                                                MappingHint.ENDPOINT_INDEPENDENT)


async def test_a_configured_hint_wins_over_discovery() -> None:
    config = PunchConfig(mapping=MappingHint.ENDPOINT_INDEPENDENT,
                         mapping6=MappingHint.ENDPOINT_DEPENDENT)
    assert await offer_hints(config) == (MappingHint.ENDPOINT_INDEPENDENT,
                                         MappingHint.ENDPOINT_DEPENDENT)
