"""Inbound connections bounded per source network, not only per peer id and in total.

py-libp2p bounds a host's connections per peer id (8) and in total (`max_connections`), but
fresh peer ids are free: one host with a few hundred identities fills the table and every
service with it. `limit_inbound` puts a `SlotLimit` in front of the swarm's `add_conn`, which
every inbound connection passes once established (TCP after Noise, QUIC after TLS, relay
circuits): a source network (IPv4 /24, IPv6 /56; circuits count as one network, `RELAYED`)
holds at most its share, and the slot is given back when the swarm forgets the connection.
Outbound connections are this node's own choice and are not counted.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from libp2p.abc import IHost, IMuxedConn
from libp2p.connection_types import ConnectionType
from libp2p.network.exceptions import SwarmException

from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError
from meshnat.limits import RELAYED, Claim, SlotLimit, network_of

log = logging.getLogger(__name__)


def source_network(muxed_conn: IMuxedConn) -> str:
    """The network an inbound connection counts for."""
    kind = getattr(muxed_conn, "get_connection_type", None)
    if kind is not None and kind() == ConnectionType.RELAYED:
        return RELAYED
    try:
        addr = cast(Any, muxed_conn).get_remote_address()
        return network_of(Endpoint.from_sockaddr(addr).ip) if addr else RELAYED
    except (ConfigError, ValueError, TypeError, AttributeError):
        return RELAYED


def limit_inbound(host: IHost, *, total: int, per_network: int) -> SlotLimit:
    """Bound `host`'s inbound connections per source network; returns the limit (statistics)."""
    swarm = cast(Any, host.get_network())
    limit = SlotLimit(total=total, per_peer=min(8, total), per_network=per_network)
    claims: dict[int, Claim] = {}  # id(muxed_conn) -> its slot
    original_add, original_remove = swarm.add_conn, swarm.remove_conn

    async def add_conn(muxed_conn: IMuxedConn, direction: str = "unknown") -> Any:
        if direction != "inbound" or id(muxed_conn) in claims:
            return await original_add(muxed_conn, direction)
        network = source_network(muxed_conn)
        claim = limit.acquire(str(muxed_conn.peer_id), network)
        if claim is None:
            log.debug("inbound connection from %s refused: %s share held",
                      network, limit.last_refusal)
            await muxed_conn.close()
            raise SwarmException(f"inbound connections: the {limit.last_refusal} share is held")
        claims[id(muxed_conn)] = claim
        try:
            return await original_add(muxed_conn, direction)
        except BaseException:
            if claims.pop(id(muxed_conn), None) is not None:
                limit.release(claim)
            raise

    def remove_conn(swarm_conn: Any) -> None:
        original_remove(swarm_conn)
        muxed = swarm_conn.muxed_conn
        still_held = any(c.muxed_conn is muxed for conns in swarm.connections.values()
                         for c in conns)
        claim = None if still_held else claims.pop(id(muxed), None)
        if claim is not None:
            limit.release(claim)

    swarm.add_conn, swarm.remove_conn = add_conn, remove_conn
    return limit
