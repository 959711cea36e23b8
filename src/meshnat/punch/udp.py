"""The trio driver of a UdpPunchSession on the node's UDP (QUIC) socket."""

from __future__ import annotations

import logging
import math

import trio

from meshnat.endpoint import Endpoint
from meshnat.errors import PunchFailed, RemoteProtocolError
from meshnat.node import MeshNode
from meshnat.punch.core import GaveUp, Heard, SendProbe, UdpPunchSession
from meshnat.punch.messages import Probe
from meshnat.wire import decode, encode, frame_datagram, unframe_datagram

log = logging.getLogger(__name__)


async def punch_udp(node: MeshNode, session: UdpPunchSession) -> Heard:
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
