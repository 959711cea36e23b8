"""`pipe()`: carry bytes both ways between two byte streams until both ends are done.

Each direction reads at most one chunk and writes it before reading again, so a tunnel holds
at most `chunk_size` bytes per direction and a slow reader slows the writer down
(backpressure). End of stream on one side is passed on as a half-close while the other
direction keeps flowing. Any byte in either direction pushes the idle deadline back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import trio

from meshnat.errors import MeshNatError

log = logging.getLogger(__name__)

_BROKEN = (MeshNatError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class ByteStream(Protocol):
    """What `pipe()` needs of each end: trio's SocketStream and `StreamBytes` both have it."""

    async def receive_some(self, max_bytes: int) -> bytes: ...
    async def send_all(self, data: bytes) -> None: ...
    async def send_eof(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PipeResult:
    """What a finished pipe carried and why it ended.

    `outcome` is `closed` (both directions reached end of stream), `idle-timeout` or `reset`
    (a read or write failed on either end; `error` says which).
    """

    a_to_b: int
    b_to_a: int
    outcome: str
    error: str | None = None


async def pipe(a: ByteStream, b: ByteStream, *, chunk_size: int,
               idle_timeout: float) -> PipeResult:
    """Copy `a` to `b` and `b` to `a` concurrently; returns when both are done or one broke."""
    carried = [0, 0]
    errors: list[str] = []
    with trio.CancelScope(deadline=trio.current_time() + idle_timeout) as idle:

        async def one_way(src: ByteStream, dst: ByteStream, index: int) -> None:
            try:
                while data := await src.receive_some(chunk_size):
                    idle.deadline = trio.current_time() + idle_timeout
                    await dst.send_all(data)
                    carried[index] += len(data)
                    idle.deadline = trio.current_time() + idle_timeout
                await dst.send_eof()
            except _BROKEN as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                idle.cancel()  # one broken end ends the tunnel in both directions

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_way, a, b, 0)
            nursery.start_soon(one_way, b, a, 1)
    if errors:
        log.debug("tunnel: pipe broke: %s", errors[0])
        return PipeResult(carried[0], carried[1], "reset", errors[0])
    outcome = "idle-timeout" if idle.cancelled_caught else "closed"
    return PipeResult(carried[0], carried[1], outcome)
