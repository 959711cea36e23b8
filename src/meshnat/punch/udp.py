"""The trio driver of a UdpPunchSession on the node's UDP (QUIC) socket."""

from __future__ import annotations

import contextlib
import logging
import math
import socket

import trio

from meshnat.endpoint import Endpoint
from meshnat.errors import PunchFailed, RemoteProtocolError
from meshnat.node import MeshNode
from meshnat.punch.birthday import EasySideSession, HardSideSession, HeardOn, SendFrom
from meshnat.punch.core import GaveUp, Heard, SendProbe, UdpPunchSession
from meshnat.punch.messages import Probe
from meshnat.wire import MAX_DATAGRAM_SIZE, decode, encode, frame_datagram, unframe_datagram

log = logging.getLogger(__name__)


async def punch_udp(node: MeshNode, session: UdpPunchSession | EasySideSession) -> Heard:
    """Run `session` until the peer is heard; raises PunchFailed when it gives up."""
    send, receive = trio.open_memory_channel[tuple[Probe, Endpoint]](64)

    def on_datagram(data: bytes, src: Endpoint) -> None:
        payload = unframe_datagram(data)
        if payload is None:
            return
        try:
            probe = decode(payload, Probe)
        except RemoteProtocolError:
            return  # another meshnat message on the shared socket
        try:
            send.send_nowait((probe, src))
        except trio.WouldBlock:
            log.debug("punch: probe queue full, dropped one from %s", src)

    unsubscribe = node.udp.subscribe(on_datagram)
    try:
        session.start(trio.current_time())
        while True:
            while (action := session.next_action()) is not None:
                match action:
                    case SendProbe(dst=dst, probe=probe):
                        try:
                            await node.udp.sendto(frame_datagram(encode(probe)), dst)
                        except OSError as exc:  # one bad candidate must not end the punch
                            log.debug("punch: probe to %s failed: %s", dst, exc)
                    case Heard():
                        return action
                    case GaveUp(reason=reason, probes_sent=sent):
                        raise PunchFailed(reason, probes_sent=sent)
            timer = session.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer):
                probe, src = await receive.receive()
                session.receive_probe(probe, src, trio.current_time())
                continue
            session.handle_timer(trio.current_time())
    finally:
        unsubscribe()


async def punch_udp_many(session: HardSideSession, sockets: int) -> tuple[HeardOn, int]:
    """Run a hard-side birthday session on `sockets` fresh UDP sockets.

    Returns what was heard and the local port of the socket that heard it. Every socket is
    closed on return, so the caller can bind that port again (the NAT mapping stays).
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
                while True:
                    data, addr = await sock.recvfrom(MAX_DATAGRAM_SIZE + 1)
                    payload = unframe_datagram(data)
                    if payload is None:
                        continue
                    try:
                        probe = decode(payload, Probe)
                    except RemoteProtocolError:
                        continue
                    with contextlib.suppress(trio.WouldBlock):
                        send.send_nowait((index, probe, Endpoint.from_sockaddr(addr)))

            for index, sock in enumerate(socks):
                nursery.start_soon(listen, index, sock)
            heard = await _drive_many(session, socks, receive)
            nursery.cancel_scope.cancel()
        return heard, socks[heard.socket].getsockname()[1]
    finally:
        for sock in socks:
            sock.close()


async def _drive_many(session: HardSideSession, socks: list[trio.socket.SocketType],
                      receive: trio.MemoryReceiveChannel[tuple[int, Probe, Endpoint]]
                      ) -> HeardOn:
    session.start(trio.current_time())
    while True:
        while (action := session.next_action()) is not None:
            match action:
                case SendFrom(socket=index, dst=dst, probe=probe):
                    try:
                        await socks[index].sendto(frame_datagram(encode(probe)),
                                                  dst.to_sockaddr())
                    except OSError as exc:
                        log.debug("punch: birthday probe to %s failed: %s", dst, exc)
                case HeardOn():
                    return action
                case GaveUp(reason=reason, probes_sent=sent):
                    raise PunchFailed(reason, probes_sent=sent)
        timer = session.get_timer()
        with trio.move_on_at(math.inf if timer is None else timer):
            index, probe, src = await receive.receive()
            session.receive_probe(index, probe, src, trio.current_time())
            continue
        session.handle_timer(trio.current_time())
