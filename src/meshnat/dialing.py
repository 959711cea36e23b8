"""Happy eyeballs for `MeshNode.connect` (RFC 8305 §5): one connection from a peer's addresses.

The addresses are tried with the IP families alternating (`_libp2p.interleave_addrs`, the
first address's family first), a new attempt starting `ATTEMPT_DELAY` after the previous one or
as soon as it failed, the first connection winning (the others are cancelled, or closed if they
also made it). So an address that swallows packets (a firewalled IPv6 one, a stale IPv4
mapping) delays the next by 250 ms, not by the whole timeout.
"""

from __future__ import annotations

import logging

import multiaddr
import trio

from meshnat import _libp2p
from meshnat._libp2p import IHost, INetConn, PeerInfo
from meshnat.errors import PeerUnavailable

log = logging.getLogger(__name__)

ATTEMPT_DELAY = 0.25
"""Seconds between the starts of two dials (RFC 8305 §5's recommended Connection Attempt
Delay)."""


async def dial_first(host: IHost, peer: PeerInfo, limit: float) -> None:
    """Connect to `peer` at the first of its addresses that answers within `limit` seconds
    (its addresses are then kept in the peerstore for an hour); PeerUnavailable or PeerTimeout
    if none does."""
    errors: list[PeerUnavailable] = []
    won: list[INetConn] = []
    network = host.get_network()

    async def attempt(addr: multiaddr.Multiaddr, failed: trio.Event,
                      nursery: trio.Nursery) -> None:
        try:
            with _libp2p.map_peer_errors(f"dial {addr}"):
                conn = await network.dial_addr(addr, peer.peer_id)
        except PeerUnavailable as exc:
            errors.append(exc)
            log.debug("%s", exc)
            failed.set()
            return
        won.append(conn)
        nursery.cancel_scope.cancel()

    with _libp2p.map_peer_errors("connect", limit), trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            for addr in _libp2p.interleave_addrs(peer.addrs):
                failed = trio.Event()
                nursery.start_soon(attempt, addr, failed, nursery)
                with trio.move_on_after(ATTEMPT_DELAY):
                    await failed.wait()
    for extra in won[1:]:  # two attempts made it at once: keep the first
        with trio.CancelScope(shield=True), trio.move_on_after(limit):
            await extra.close()
    if won:
        host.get_peerstore().add_addrs(peer.peer_id, peer.addrs, 3600)
        return
    last = errors[-1] if errors else None
    raise PeerUnavailable(f"could not connect to {peer.peer_id}: {last}")
