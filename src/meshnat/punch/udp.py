"""The trio drivers of the birthday-probing sessions: on the node's UDP (QUIC) socket (the
easy side) and on many fresh sockets (the hard side)."""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from meshnat import _libp2p
from meshnat.datagrams import parse_datagram, receive_messages
from meshnat.endpoint import Endpoint
from meshnat.errors import PunchFailed
from meshnat.node import MeshNode
from meshnat.punch.birthday import EasySideSession, HardSideSession, HeardOn, SendFrom
from meshnat.punch.core import GaveUp, Heard, SendProbe
from meshnat.punch.messages import Probe
from meshnat.traversal.budget import SendBudget, udp_wire_bytes
from meshnat.wire import encode, frame_datagram

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeardOnPort:
    """The hard side heard the easy side: what it heard, and the local UDP port of the socket
    that heard it (closed by now; its NAT mapping stays)."""

    heard: HeardOn
    port: int


async def punch_udp(node: MeshNode, session: EasySideSession, budget: SendBudget) -> Heard:
    """Run `session` until the peer is heard; raises PunchFailed when it gives up. Each probe
    is paid from `budget` (not sent when an unproven IP's allowance is spent)."""

    def accept(data: bytes, src: Endpoint) -> tuple[Probe, Endpoint] | None:
        probe = parse_datagram(data, Probe)  # None: another meshnat message on the socket
        return None if probe is None else (probe, src)

    def on_full(item: tuple[Probe, Endpoint]) -> None:
        log.debug("punch: probe queue full, dropped one from %s", item[1])

    async def send_probe(action: SendProbe) -> None:
        data = frame_datagram(encode(action.probe))
        if budget.spend(action.dst.ip, udp_wire_bytes(len(data), action.dst.ip)):
            await node.udp.sendto(data, action.dst)

    with _libp2p.tapped(node.udp, accept, 64, on_full=on_full) as receive:
        heard = await _drive(session, receive, send_probe, budget)
    assert isinstance(heard, Heard)
    return heard


async def punch_udp_many(session: HardSideSession, sockets: int,
                         budget: SendBudget) -> HeardOnPort:
    """Run a hard-side birthday session on `sockets` fresh UDP sockets, each probe paid from
    `budget` (not sent when the easy side's unproven allowance is spent).

    Every socket is closed on return, so the caller can bind the port that heard again (the
    NAT mapping stays). Raises PunchFailed when the session gives up.
    """
    send, receive = trio.open_memory_channel[tuple[int, Probe, Endpoint]](256)
    socks: list[trio.socket.SocketType] = []
    try:
        for _ in range(sockets):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            await sock.bind(("0.0.0.0", 0))
        async with trio.open_nursery() as nursery:

            async def listen(index: int, sock: trio.socket.SocketType) -> None:
                async for probe, src in receive_messages(sock, Probe):
                    with contextlib.suppress(trio.WouldBlock):
                        send.send_nowait((index, probe, src))

            for index, sock in enumerate(socks):
                nursery.start_soon(listen, index, sock)
            async def send_from(action: SendFrom) -> None:
                data = frame_datagram(encode(action.probe))
                if budget.spend(action.dst.ip, udp_wire_bytes(len(data), action.dst.ip)):
                    await socks[action.socket].sendto(data, action.dst.to_sockaddr())

            try:  # raised here, PunchFailed would leave the nursery as an ExceptionGroup
                outcome: Heard | HeardOn | PunchFailed = await _drive(session, receive,
                                                                      send_from, budget)
            except PunchFailed as exc:
                outcome = exc
            nursery.cancel_scope.cancel()
        if isinstance(outcome, PunchFailed):
            raise outcome
        assert isinstance(outcome, HeardOn)
        return HeardOnPort(outcome, socks[outcome.socket].getsockname()[1])
    finally:
        for sock in socks:
            sock.close()


async def _drive(session: Any, receive: trio.MemoryReceiveChannel[Any],
                 send: Callable[[Any], Awaitable[None]], budget: SendBudget) -> Heard | HeardOn:
    """The one loop for every punch session: drain actions, wait for a probe or the timer.
    A probe carrying the session's txid proves its source IP in `budget` (the answer to it
    goes there)."""
    session.start(trio.current_time())
    while True:
        while (action := session.next_action()) is not None:
            match action:
                case Heard() | HeardOn():
                    return action
                case GaveUp(reason=reason, probes_sent=sent):
                    raise PunchFailed(reason, probes_sent=sent)
                case _:
                    try:
                        await send(action)
                    except OSError as exc:  # one bad candidate must not end the punch
                        log.debug("punch: probe to %s failed: %s", action.dst, exc)
        timer = session.get_timer()
        with trio.move_on_at(math.inf if timer is None else timer):
            item = await receive.receive()
            probe, src = item[-2], item[-1]
            if hmac.compare_digest(probe.txid, session.txid):
                budget.prove(src.ip)
            session.receive_probe(*item, trio.current_time())
            continue
        session.handle_timer(trio.current_time())
