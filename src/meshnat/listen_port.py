"""TCP connections from the listen port (`MeshNode.open_stream_from_listen_port`): one per peer
and family, and never a second dial of a four-tuple a connection already holds.

A request about this node's TCP address (reflection, classification) leaves from the listen
port: the mapping a peer observes there is the one other peers can reach. Two such dials to one
peer's listen endpoint have the same four-tuple, and so does the peer's own dial from its listen
port to this node's: the later connect() failed with EADDRNOTAVAIL ("Cannot assign requested
address"), py-libp2p retried it three times and logged each at ERROR (the quickstart did). Here:

- a live TCP connection to the peer between exactly these two endpoints, in either direction,
  is used: the peer observes the same mapping on it;
- dials to one peer in one family are made one at a time (discovery and classification ask at
  once);
- a dial whose four-tuple is taken all the same (the peer's connection is still being upgraded,
  or a closed one is in TIME_WAIT) waits for that connection to appear and dials again at most
  every `COLLISION_WAIT` seconds, within the caller's timeout. A fresh port would not do: the
  peer would observe another mapping, and discovery would count it.
"""

from __future__ import annotations

import logging

import multiaddr
import trio
from libp2p.network.exceptions import SwarmException

from meshnat import _libp2p
from meshnat._libp2p import ID, IHost, INetConn
from meshnat._libp2p.dial import dial_once
from meshnat._libp2p.tcp import connection_local, four_tuple_taken
from meshnat.endpoint import Endpoint

log = logging.getLogger(__name__)

COLLISION_WAIT = 1.0
"""Seconds a dial whose four-tuple was taken waits for the connection holding it, at most,
before it dials again."""


def at_four_tuple(host: IHost, peer: ID, local: Endpoint, remote: Endpoint) -> INetConn | None:
    """A live TCP connection to `peer` between `local` (an unspecified IP matches any) and
    `remote`, dialled by either side."""
    for conn in host.get_network().get_connections(peer):
        if not conn.is_closed and _holds(conn, local, remote):
            return conn
    return None


def _holds(conn: INetConn, local: Endpoint, remote: Endpoint) -> bool:
    if _libp2p.transport_of(conn) != "tcp" or _libp2p.connection_remote(conn) != remote:
        return False
    mine = connection_local(conn)
    return mine is not None and mine.port == local.port and (
        local.ip.is_unspecified or mine.ip == local.ip)


class ListenPortConnections:
    """The connections `MeshNode.open_stream_from_listen_port` made or found, per peer and
    IP family (closed ones are dropped as others are added)."""

    def __init__(self) -> None:
        self._conns: dict[tuple[ID, int], INetConn] = {}
        self._locks: dict[tuple[ID, int], trio.Lock] = {}

    def clear(self) -> None:
        self._conns.clear()

    async def get(self, host: IHost, peer: ID, addr: multiaddr.Multiaddr, local: Endpoint,
                  remote: Endpoint) -> INetConn:
        """A connection to `peer` from `local` (the TCP listen endpoint) to `remote` (at
        `addr`): the one held, or one found or dialled. The caller bounds the time."""
        key = (peer, remote.ip.version)
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                conn = self._conns.get(key)
                if conn is None or conn.is_closed:
                    conn = await self._connect(host, peer, addr, local, remote)
                    self._conns = {k: c for k, c in self._conns.items() if not c.is_closed}
                    self._conns[key] = conn
                return conn
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    @staticmethod
    async def _connect(host: IHost, peer: ID, addr: multiaddr.Multiaddr, local: Endpoint,
                       remote: Endpoint) -> INetConn:
        with _libp2p.connection_reports(host, 16) as reports:
            while True:
                held = at_four_tuple(host, peer, local, remote)
                if held is not None:
                    return held
                try:
                    return await dial_once(host.get_network(), addr, peer, local.to_sockaddr())
                except SwarmException as exc:  # a failed dial (mapped by the caller)
                    if not four_tuple_taken(exc):
                        raise
                log.debug("listen port: the four-tuple %s-%s is taken; waiting for its "
                          "connection", local, remote)
                with trio.move_on_after(COLLISION_WAIT):
                    async for conn in reports:
                        if not conn.is_closed and _holds(conn, local, remote):
                            return conn
