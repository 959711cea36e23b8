"""One dial attempt, without py-libp2p's retries.

py-libp2p 0.8.1's `Swarm.dial_addr` retries a failed dial (`RetryConfig`: 3 retries after 0.1,
0.2 and 0.4 s), so one call may connect four times. A dial meshnat pays for from a send budget
(a punch's TCP dial to an address the peer has not proven) must be one attempt, as charged:
`Swarm.dial_addr_as_responder` already is; `dial_once` is the initiator's counterpart.
"""

from __future__ import annotations

from typing import Any

import multiaddr
from libp2p.abc import INetConn, INetwork
from libp2p.peer.id import ID


async def dial_once(network: INetwork, address: multiaddr.Multiaddr, peer: ID,
                    source: tuple[str, int] | None = None) -> INetConn:
    """`network.dial_addr(address, peer, source)` with a single attempt."""
    swarm: Any = network
    conn: INetConn = await swarm._dial_addr_single_attempt(address, peer, source)
    return conn
