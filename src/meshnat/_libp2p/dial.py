"""One dial attempt, without py-libp2p's retries.

py-libp2p 0.8.1's `Swarm.dial_addr` retries a failed dial (`RetryConfig`: 3 retries after 0.1,
0.2 and 0.4 s), so one call may connect four times. A dial meshnat pays for from a send budget
(a punch's TCP dial to an address the peer has not proven) must be one attempt, as charged:
`Swarm.dial_addr_as_responder` already is; `dial_once` is the initiator's counterpart.
"""

from __future__ import annotations

from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetwork
from libp2p.peer.id import ID

from meshnat._libp2p.streams import map_peer_errors
from meshnat.errors import MeshNatError


async def dial_once(network: INetwork, address: multiaddr.Multiaddr, peer: ID,
                    source: tuple[str, int] | None = None) -> INetConn:
    """`network.dial_addr(address, peer, source)` with a single attempt."""
    swarm: Any = network
    conn: INetConn = await swarm._dial_addr_single_attempt(address, peer, source)
    return conn


async def dial_back_tcp(network: INetwork, peer: ID, ip: str, port: int, timeout: float) -> bool:
    """One fresh TCP connection to `peer` at `ip:port` (Noise proves who answers it), closed
    again at once: True if `peer` answered there within `timeout` seconds. A router port
    mapping's confirmation; the caller checks that `ip` is the requester's own."""
    proto = "ip6" if ":" in ip else "ip4"
    address = multiaddr.Multiaddr(f"/{proto}/{ip}/tcp/{port}")
    conn: INetConn | None = None
    try:
        with map_peer_errors("dial-back", timeout), trio.fail_after(timeout):
            conn = await dial_once(network, address, peer)
            return bool(conn.muxed_conn.peer_id == peer)
    except MeshNatError:
        return False
    finally:
        if conn is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await conn.close()
