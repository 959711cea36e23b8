"""Misbehaving UDP reflectors for loopback tests, mounted like any service."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from meshnat import MeshNode, NodeConfig
from meshnat._libp2p import TaskStatus
from meshnat.endpoint import Endpoint
from meshnat.errors import RemoteProtocolError
from meshnat.reflection.messages import ObserveRequest, ObserveResponse, Transport
from meshnat.wire import decode, encode, frame_datagram, new_txid, unframe_datagram

LOOPBACK = NodeConfig(listen_ip="127.0.0.1")


class Behaviour(enum.Enum):
    LIE = "lie"                # answers with a fixed, false endpoint
    SILENT = "silent"          # never answers
    SLOW = "slow"              # answers truthfully, 30 s late
    GARBAGE = "garbage"        # answers with a meshnat datagram that is not CBOR
    STALE_ID = "stale-id"      # answers truthfully but under a request id never sent
    REPLAY = "replay"          # answers each request with the answer to the first one


class FakeReflector:
    """Answers observe datagrams according to `behaviour`."""

    def __init__(self, behaviour: Behaviour, lie: Endpoint | None = None) -> None:
        self.behaviour, self.lie = behaviour, lie
        self.requests = 0
        self._first: bytes | None = None

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        send, receive = trio.open_memory_channel[tuple[bytes, Endpoint]](64)
        unsubscribe = node.udp.subscribe(lambda d, s: send.send_nowait((d, s)))
        try:
            task_status.started()
            async with trio.open_nursery() as nursery:
                async for data, src in receive:
                    try:
                        request = decode(unframe_datagram(data) or b"", ObserveRequest)
                    except RemoteProtocolError:
                        continue
                    self.requests += 1
                    reply = self._reply(request, src)
                    if reply is not None:
                        nursery.start_soon(self._send, node, reply, src)
        finally:
            unsubscribe()

    def _reply(self, request: ObserveRequest, src: Endpoint) -> bytes | None:
        match self.behaviour:
            case Behaviour.SILENT:
                return None
            case Behaviour.GARBAGE:
                return frame_datagram(b"\xff\x00garbage")
            case Behaviour.LIE:
                assert self.lie is not None
                return frame_datagram(encode(ObserveResponse(request.txid, self.lie,
                                                             Transport.UDP)))
            case Behaviour.STALE_ID:
                return frame_datagram(encode(ObserveResponse(new_txid(), src, Transport.UDP)))
        truthful = frame_datagram(encode(ObserveResponse(request.txid, src, Transport.UDP)))
        if self.behaviour is Behaviour.REPLAY:
            self._first = self._first or truthful
            return self._first
        return truthful

    async def _send(self, node: MeshNode, reply: bytes, dst: Endpoint) -> None:
        if self.behaviour is Behaviour.SLOW:
            await trio.sleep(30)  # a slow peer: the client's deadline must not wait for it
        await node.udp.sendto(reply, dst)


@asynccontextmanager
async def nodes(count: int) -> AsyncIterator[list[MeshNode]]:
    """`count` running MeshNodes on 127.0.0.1, closed on exit."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(MeshNode(LOOPBACK)) for _ in range(count)]
