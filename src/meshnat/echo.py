"""`EchoService`: answers each stream with what it received; the smallest mountable service."""

from __future__ import annotations

import logging

import trio

from meshnat import _libp2p
from meshnat._libp2p import INetStream, TaskStatus, TProtocol
from meshnat.errors import MeshNatError
from meshnat.node import MeshNode

log = logging.getLogger(__name__)

ECHO_PROTOCOL = TProtocol("/meshnat/echo/1.0.0")
MAX_ECHO = 64 * 1024


class EchoService:
    """Echoes up to 64 KiB per stream, then closes; a reachability check for tests and the CLI."""

    protocol_id = ECHO_PROTOCOL

    def __init__(self, *, stream_timeout: float = 10.0) -> None:
        self._stream_timeout = stream_timeout
        self.served = 0
        """Streams answered; counted before the answer is written, so a peer holding the
        answer can rely on the count (closing the stream comes after)."""

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        with _libp2p.handling(node.host, self.protocol_id, "echo", self._handle):
            task_status.started()
            await trio.sleep_forever()

    async def _handle(self, stream: INetStream) -> None:
        try:
            with (
                _libp2p.map_peer_errors("echo", self._stream_timeout),
                trio.fail_after(self._stream_timeout),
            ):
                data = await stream.read(MAX_ECHO)
                self.served += 1
                await stream.write(data)
                await stream.close()
        except MeshNatError as exc:
            log.debug("echo: dropped stream: %s", exc)
            await _libp2p.reset_quietly(stream)


async def echo(
    node: MeshNode, peer: _libp2p.PeerInfo, data: bytes, *, timeout: float = 10.0,
    connection: _libp2p.INetConn | None = None,
) -> bytes:
    """Send `data` to `peer`'s echo service (over `connection` if given) and return the answer."""
    if connection is None:
        stream = await node.open_stream(peer, ECHO_PROTOCOL, timeout=timeout)
    else:
        with _libp2p.map_peer_errors("open echo", timeout), trio.fail_after(timeout):
            stream = await _libp2p.open_stream_on(node.host, connection, ECHO_PROTOCOL, timeout)
    with _libp2p.map_peer_errors("echo", timeout), trio.fail_after(timeout):
        await stream.write(data)
        answer = await stream.read(MAX_ECHO)
        await stream.close()
    return bytes(answer)
