"""Inbound connections bounded per source network, not only per peer id and in total.

py-libp2p bounds a host's connections per peer id (8) and in total (`max_connections`), but
fresh peer ids are free: one host with a few hundred identities fills the table and every
service with it. `limit_inbound` puts a `SlotLimit` in front of the swarm's `add_conn`, which
every inbound connection passes once established (TCP after Noise, QUIC after TLS, relay
circuits): a source network (IPv4 /24, IPv6 /56; circuits count as one network, `RELAYED`)
holds at most its share, and the slot is given back when the swarm forgets the connection.
Outbound connections are this node's own choice and are not counted.

`end_inbound_handlers` fixes a leak in py-libp2p 0.8.1's swarm: its handler for an inbound
connection (`Swarm._do_handle_inbound_connection`) waits for the *swarm* to finish, not for its
connection, while holding a slot of the swarm's inbound limiter (max_connections -
min_connections slots). A closed connection's handler task, and its slot, stayed until the node
stopped: after that many inbound connections over a node's life (2,048 by default, at any rate
of connecting and leaving) it refused every new one. Here each inbound handler runs in a cancel
scope that is cancelled when the swarm forgets its connection.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any, cast

import trio
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


_HANDLER: contextvars.ContextVar[list[trio.CancelScope]] = contextvars.ContextVar(
    "meshnat_inbound_handler")
"""Inside py-libp2p's handler of one inbound connection: that handler's cancel scope."""


def end_inbound_handlers(host: IHost) -> dict[int, trio.CancelScope]:
    """End each inbound connection's swarm handler (and free its inbound slot) when the swarm
    forgets the connection; returns the handlers still waiting, by id of their muxed
    connection (statistics, tests). Install after `limit_inbound`."""
    swarm = cast(Any, host.get_network())
    waiting: dict[int, trio.CancelScope] = {}
    original_handle = swarm._do_handle_inbound_connection
    original_add, original_remove = swarm.add_conn, swarm.remove_conn

    async def handle(read_write_closer: Any, maddr: Any, failure_event: Any) -> None:
        with trio.CancelScope() as scope:
            token = _HANDLER.set([scope])
            try:
                await original_handle(read_write_closer, maddr, failure_event)
            finally:
                _HANDLER.reset(token)

    async def add_conn(muxed_conn: IMuxedConn, direction: str = "unknown") -> Any:
        swarm_conn = await original_add(muxed_conn, direction)
        handler = _HANDLER.get(None)
        if direction == "inbound" and handler:
            if muxed_conn.is_closed:
                handler[0].cancel()
            else:
                waiting[id(muxed_conn)] = handler[0]
        return swarm_conn

    def remove_conn(swarm_conn: Any) -> None:
        original_remove(swarm_conn)
        scope = waiting.pop(id(swarm_conn.muxed_conn), None)
        if scope is not None:
            scope.cancel()

    swarm._do_handle_inbound_connection = handle
    swarm.add_conn, swarm.remove_conn = add_conn, remove_conn
    return waiting
