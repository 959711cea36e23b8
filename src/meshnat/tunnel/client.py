"""The forwarding side: open one tunnel to a peer's service, or forward a local TCP port.

`open_tunnel` finds a path (the Connector's ladder, or a plain dial), opens a stream on that
exact connection and runs the open exchange. `forward` accepts local TCP connections, at most
`max_local_connections` at once, and gives each its own tunnel, so a path that changes (relayed
to punched) applies to new connections while open ones finish where they are.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from meshnat import _libp2p
from meshnat._libp2p import ID, INetConn, PeerInfo, StreamBytes, TaskStatus, TProtocol
from meshnat.connect import Connector
from meshnat.errors import (
    ConfigError,
    MalformedMessage,
    MeshNatError,
    PeerTimeout,
    PeerUnavailable,
    TunnelRefused,
)
from meshnat.events import EventSink, TunnelClosed
from meshnat.node import MeshNode
from meshnat.paths import PathKind
from meshnat.tunnel.core import TunnelConfig
from meshnat.tunnel.messages import (
    OpenRefused,
    OpenTunnel,
    TunnelOpened,
    check_service_name,
)
from meshnat.tunnel.pipe import pipe
from meshnat.wire import TXID_SIZE, decode, encode, frame_stream, new_txid

log = logging.getLogger(__name__)


class Tunnel:
    """An open tunnel: a byte stream to a peer's exposed service, and the path it takes."""

    def __init__(self, peer: ID, service: str, path: PathKind, stream: StreamBytes) -> None:
        self.peer, self.service, self.path = peer, service, path
        """The path the tunnel takes, fixed for its life."""
        self._stream = stream

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` bytes from the service; b"" once it has finished sending."""
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        """Tell the service this side has finished sending; its answer can still arrive."""
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def reset(self) -> None:
        """Abort both directions at once."""
        await self._stream.reset()


class PathLocks:
    """One path search per peer at a time, so that a burst of tunnels to a peer without a
    connection dials it once instead of once per tunnel. Holds entries only while in use."""

    def __init__(self) -> None:
        self._locks: dict[ID, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, peer: ID) -> AsyncIterator[None]:
        lock, users = self._locks.get(peer, (trio.Lock(), 0))
        self._locks[peer] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[peer]
            if users == 1:
                del self._locks[peer]
            else:
                self._locks[peer] = (lock, users - 1)


async def _path(node: MeshNode, connector: Connector | None,
                peer: PeerInfo) -> tuple[INetConn, PathKind]:
    if connector is not None:
        path = await connector.connect(peer)
        return path.connection, path.kind
    await node.connect(peer)
    best = node.best_connection(peer.peer_id)
    return best.conn, best.kind


async def open_tunnel(node: MeshNode, connector: Connector | None, config: TunnelConfig,
                      locks: PathLocks, peer: PeerInfo, name: str,
                      protocol: TProtocol) -> Tunnel:
    """Open a tunnel to `peer`'s service `name` (see TunnelService.open for what it raises)."""
    check_service_name(name)
    limit = config.open_timeout
    request = OpenTunnel(new_txid(), name)
    first = frame_stream(encode(request))
    for attempt in (1, 2):  # a relayed connection can close under us as a punch lands
        async with locks.hold(peer.peer_id):
            conn, kind = await _path(node, connector, peer)
        try:
            # the request rides with the negotiation: one round trip to the answer, not two
            stream = await _libp2p.open_stream_sending(node.host, peer.peer_id, protocol,
                                                       first, limit, on=conn)
            break
        except PeerUnavailable:
            if attempt == 2 or not conn.is_closed:
                raise
    try:
        with _libp2p.map_peer_errors("tunnel open", limit), trio.fail_after(limit):
            reply = decode(await _libp2p.read_frame(stream), TunnelOpened, OpenRefused)
        if reply.txid not in (request.txid, bytes(TXID_SIZE)):
            raise MalformedMessage("the answer names another tunnel")
        if isinstance(reply, OpenRefused):
            raise TunnelRefused(reply.code, reply.reason)
        if reply.txid != request.txid:
            raise MalformedMessage("an opened tunnel must echo its request's txid")
    except BaseException:
        with trio.CancelScope(shield=True):
            await _libp2p.reset_quietly(stream)
        raise
    return Tunnel(peer.peer_id, name, kind, StreamBytes(stream))


def _outcome_of(exc: MeshNatError) -> str:
    if isinstance(exc, TunnelRefused):
        return exc.code
    if isinstance(exc, (PeerUnavailable, PeerTimeout)):
        return "unreachable"
    return "protocol-error"


async def forward(open_one: Callable[[], Awaitable[Tunnel]], peer: str, service: str,
                  listen: tuple[str, int], config: TunnelConfig, events: EventSink,
                  task_status: TaskStatus[tuple[str, int]]) -> None:
    """Accept local connections on `listen`; tunnel each through `open_one()`."""
    host, port = listen
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    slots = trio.Semaphore(config.max_local_connections)

    async def serve_one(local: trio.SocketStream) -> None:
        started = trio.current_time()
        path, sent, received, outcome = "none", 0, 0, "reset"
        error: str | None = None
        try:
            try:
                tunnel = await open_one()
            except MeshNatError as exc:
                log.info("forward: no tunnel to %s %s: %s", peer, service, exc)
                outcome, error = _outcome_of(exc), str(exc)
                return
            path = tunnel.path
            try:
                result = await pipe(local, tunnel, chunk_size=config.chunk_size,
                                    idle_timeout=config.idle_timeout)
                sent, received, outcome = result.a_to_b, result.b_to_a, result.outcome
                error = result.error
            finally:
                with trio.CancelScope(shield=True):
                    await (tunnel.aclose() if outcome == "closed" else tunnel.reset())
        finally:
            slots.release()
            with trio.CancelScope(shield=True):
                await local.aclose()
            events(TunnelClosed("forward", peer, service, path, sent, received,
                                trio.current_time() - started, outcome, error))

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                await slots.acquire()  # bounded: past the limit, clients wait in the backlog
                try:
                    local = await listener.accept()
                except OSError as exc:  # out of file descriptors and the like: back off
                    slots.release()
                    log.warning("forward: accept failed: %s", exc)
                    await trio.sleep(0.1)  # trio.serve_listeners' own back-off
                    continue
                except BaseException:
                    slots.release()
                    raise
                nursery.start_soon(serve_one, local)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery)
        bound = listeners[0].socket.getsockname()
        log.info("forward: %s:%d -> %s %s", bound[0], bound[1], peer, service)
        task_status.started((bound[0], bound[1]))
