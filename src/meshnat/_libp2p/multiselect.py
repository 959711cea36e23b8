"""Multistream-select in one round trip: the header and the protocol proposed together.

py-libp2p 0.8.1's client writes the `/multistream/1.0.0` header, waits for the peer's, then
proposes the protocol and waits again: two round trips before a stream carries a byte, on
every stream (punch coordination over a relay, ping, echo, tunnels). The listener's side of the
protocol does not care when the proposal comes, so go-libp2p's and js-libp2p's dialers send
the header and their first proposal in one write; `install()` makes py-libp2p's client do the
same (wire-compatible: the bytes are the ones it sent before, only sooner). Further proposals,
after an `na`, go one round trip each as before.

`open_stream_sending` goes one step further, as go-libp2p's lazy client does: the first
message of the protocol itself rides in the same write, so the peer's answer to it comes back
one round trip after the stream was opened (DCUtR's timing assumes exactly that).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import trio
from libp2p.abc import IHost, IMultiselectCommunicator, INetConn, INetStream
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    MultiselectCommunicatorError,
    MultiselectError,
    ProtocolNotSupportedError,
)
from libp2p.protocol_muxer.multiselect import Multiselect
from libp2p.protocol_muxer.multiselect_client import (
    DEFAULT_NEGOTIATE_TIMEOUT,
    MULTISELECT_PROTOCOL_ID,
    PROTOCOL_NOT_FOUND_MSG,
    MultiselectClient,
)
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.utils import encode_delim

from meshnat._libp2p.streams import map_peer_errors, reset_quietly
from meshnat.errors import PeerUnavailable

_STARTED = "_meshnat_negotiation_started"
_original_select_one_of = MultiselectClient.select_one_of
_original_negotiate = Multiselect.negotiate


async def _negotiate(self: Multiselect, communicator: IMultiselectCommunicator,
                     negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT) -> Any:
    """py-libp2p's listener side, but a handler removed while its protocol name is being
    echoed (a service unmounting as a stream for it arrives) ends that stream, not the node:
    py-libp2p looks the handler up again after the write, and the KeyError escaped the
    connection's task group. The time negotiation started is noted on the stream
    (`negotiation_started`): a protocol timing its peer's round trip can say how long its own
    side took."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(communicator.read_writer, _STARTED, trio.current_time())  # type: ignore[attr-defined]
    try:
        return await _original_negotiate(self, communicator, negotiate_timeout)
    except KeyError as exc:
        raise MultiselectError("protocol unregistered during negotiation") from exc


def negotiation_started(stream: INetStream) -> float | None:
    """When this side began negotiating `stream`'s protocol (trio time), if it was the
    listener and saw it; None otherwise."""
    started = getattr(stream, _STARTED, None)
    return started if isinstance(started, float) else None


def proposal(protocol: str) -> bytes:
    """The header and a proposal of `protocol`, as one write."""
    return encode_delim(MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(protocol.encode())


async def _read_answer(communicator: IMultiselectCommunicator, protocol: str) -> bool:
    """Read the peer's header and its answer to `protocol`: True if accepted, False on `na`.
    Raises MultiselectClientError on anything else."""
    header = await communicator.read()
    if header != MULTISELECT_PROTOCOL_ID:
        raise MultiselectClientError("multiselect protocol ID mismatch")
    answer = await communicator.read()
    if answer == protocol:
        return True
    if answer == PROTOCOL_NOT_FOUND_MSG:
        return False
    raise MultiselectClientError("unrecognized multiselect answer")


async def select_one_of(self: MultiselectClient, protocols: Sequence[TProtocol],
                        communicator: IMultiselectCommunicator,
                        negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT) -> TProtocol:
    """`MultiselectClient.select_one_of` with the header and the first proposal in one write;
    after an `na`, the rest one by one (py-libp2p's own `try_select`)."""
    if not protocols or not isinstance(communicator, MultiselectCommunicator):
        return await _original_select_one_of(self, protocols, communicator, negotiate_timeout)
    first, rest = protocols[0], list(protocols[1:])
    with trio.move_on_after(negotiate_timeout):
        try:
            await communicator.read_writer.write(proposal(first))
            if await _read_answer(communicator, first):
                return first
        except (MultiselectCommunicatorError, IOException, AssertionError, ValueError) as exc:
            # what py-libp2p's communicator raises or catches on a failing stream
            raise MultiselectClientError(f"negotiation failed: {exc}") from exc
        for protocol in rest:
            try:
                return await self.try_select(communicator, protocol)
            except ProtocolNotSupportedError:
                continue
        raise MultiselectClientError(f"protocols not supported: {list(protocols)}")
    raise MultiselectClientError(f"response timed out after {negotiate_timeout}s")


async def open_stream_sending(host: IHost, peer: ID, protocol: TProtocol, first: bytes,
                              timeout: float, *, on: INetConn | None = None,
                              on_written: Callable[[], None] | None = None) -> INetStream:
    """A `protocol` stream to `peer` (on `on`, else on the connection py-libp2p would pick)
    whose first message `first` went out with the negotiation, in one write; `on_written` is
    called as that write returns (a round trip timed from there leaves out the stream's
    opening). Returns once the peer accepted `protocol`; raises PeerUnavailable if it refused
    or the stream failed, and PeerTimeout after `timeout` seconds."""
    with map_peer_errors(f"open {protocol}", timeout), trio.fail_after(timeout):
        stream = await (on.new_stream() if on is not None
                        else host.get_network().new_stream(peer))
        try:
            await stream.write(proposal(protocol) + first)
            if on_written is not None:
                on_written()
            if not await _read_answer(MultiselectCommunicator(stream), protocol):
                raise PeerUnavailable(f"the peer does not speak {protocol}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await reset_quietly(stream)
            raise
    stream.set_protocol(protocol)
    return stream


def install() -> None:
    """Use the one-write proposal for every stream py-libp2p's client negotiates, and a
    listener side that survives a handler removed mid-negotiation."""
    cast(Any, MultiselectClient).select_one_of = select_one_of
    cast(Any, Multiselect).negotiate = _negotiate
