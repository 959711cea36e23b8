"""The coordination stream's helpers for paying: Padding frames out, paid frames in, and a
polite end (trio, over py-libp2p streams; the amounts are `punch/payment.py`'s)."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from meshnat import _libp2p
from meshnat._libp2p import INetStream
from meshnat.errors import MalformedMessage, MeshNatError
from meshnat.punch.messages import Offer, Padding, Sync
from meshnat.punch.payment import MAX_PADDING_FRAMES, padding_frames
from meshnat.traversal.budget import SendBudget
from meshnat.wire import decode, encode
from meshnat.wire.error_response import ErrorResponse


async def read_until_closed(stream: INetStream, limit: float) -> None:
    """Wait (up to `limit` s) for the peer to end `stream`, so what we wrote reaches it before
    our reset does (a relay may forward a reset ahead of data)."""
    with trio.move_on_after(limit), contextlib.suppress(MeshNatError), \
            _libp2p.map_peer_errors("punch close"):
        await _libp2p.read_frame(stream)


async def pay(stream: INetStream, txid: bytes, nbytes: int) -> None:
    """Send `Padding` frames worth `nbytes` (none for 0)."""
    for padding in padding_frames(txid, nbytes):
        await _libp2p.write_frame(stream, encode(padding))


async def read_paid(stream: INetStream, frame: bytes, budget: SendBudget,
                    *expected: type[Offer] | type[Sync] | type[ErrorResponse]) -> Any:
    """The first of `expected` from `frame` on, skipping `Padding` frames; every frame's
    bytes pay into `budget`. More than MAX_PADDING_FRAMES of padding is malformed."""
    for _ in range(MAX_PADDING_FRAMES + 1):
        budget.pay(len(frame))
        message = decode(frame, Padding, *expected)
        if not isinstance(message, Padding):
            return message
        frame = await _libp2p.read_frame(stream)
    raise MalformedMessage(f"more than {MAX_PADDING_FRAMES} padding frames")
