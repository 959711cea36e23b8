"""Protocol negotiation in one round trip (`_libp2p.multiselect`), against py-libp2p's own
multistream-select listener and between two nodes."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.exceptions import MultiselectError
from libp2p.protocol_muxer.multiselect import Multiselect
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.utils import encode_delim

from meshnat import _libp2p
from meshnat._libp2p import multiselect
from meshnat.errors import PeerUnavailable
from tests.support.fake_reflectors import nodes
from tests.support.stream_adapter import StreamAdapter

WANTED, OTHER = TProtocol("/test/wanted/1.0.0"), TProtocol("/test/other/1.0.0")


class Recorder(StreamAdapter):
    """One end of a memory stream that records what the client did, in order."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.log = list[tuple[str, bytes]]()

    async def read(self, n: int | None = None) -> bytes:
        self.log.append(("read", b""))
        return await super().read(n)

    async def write(self, data: bytes) -> None:
        self.log.append(("write", data))
        await super().write(data)


async def negotiate(served: list[TProtocol], proposed: list[TProtocol]
                    ) -> tuple[TProtocol, TProtocol | None, list[tuple[str, bytes]]]:
    """(what the client selected, what the listener agreed, the client's reads and writes)."""
    multiselect.install()
    ours, theirs = trio.testing.memory_stream_pair()
    client_end = Recorder(ours)
    listener = Multiselect({protocol: None for protocol in served})
    agreed: list[TProtocol | None] = []

    async def serve() -> None:
        protocol, _ = await listener.negotiate(MultiselectCommunicator(StreamAdapter(theirs)), 10)
        agreed.append(protocol)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with trio.fail_after(10):
            selected = await MultiselectClient().select_one_of(
                proposed, MultiselectCommunicator(client_end), 10)
    return selected, agreed[0], client_end.log


async def test_the_header_and_the_proposal_go_out_in_one_write_before_any_read() -> None:
    """py-libp2p's client wrote the header alone, read the answer, then proposed: two round
    trips. Now the first write carries both and the listener agrees at once."""
    selected, agreed, log = await negotiate([WANTED], [WANTED])
    assert selected == agreed == WANTED
    assert log[0] == ("write", encode_delim(b"/multistream/1.0.0") + encode_delim(WANTED.encode()))
    assert [kind for kind, _ in log].count("write") == 1


async def test_a_refused_first_proposal_falls_back_to_the_next_one() -> None:
    selected, agreed, log = await negotiate([OTHER], [WANTED, OTHER])
    assert selected == agreed == OTHER
    assert log[0][1].endswith(encode_delim(WANTED.encode()))
    assert ("write", encode_delim(OTHER.encode())) in log


async def test_no_protocol_served_fails_the_negotiation() -> None:
    multiselect.install()
    ours, theirs = trio.testing.memory_stream_pair()
    listener = Multiselect({OTHER: None})
    async with trio.open_nursery() as nursery:
        server = MultiselectCommunicator(StreamAdapter(theirs))
        nursery.start_soon(lambda: listener.negotiate(server, 5))
        with pytest.raises(Exception, match="not supported"):
            await MultiselectClient().select_one_of([WANTED], MultiselectCommunicator(
                Recorder(ours)), 5)
        nursery.cancel_scope.cancel()


async def test_the_first_message_reaches_the_handler_with_the_negotiation() -> None:
    got: list[bytes] = []

    async def handler(stream: _libp2p.INetStream) -> None:
        got.append(await _libp2p.read_frame(stream))
        await _libp2p.write_frame(stream, b"answer")

    async with nodes(2) as (a, b):
        b.host.set_stream_handler(WANTED, handler)
        await a.connect(PeerInfo(b.peer_id, b.addrs))
        with trio.fail_after(10):
            stream = await _libp2p.open_stream_sending(
                a.host, b.peer_id, WANTED, b"\x05hello", 10)
            assert await _libp2p.read_frame(stream) == b"answer"
        assert got == [b"hello"]
        assert stream.get_protocol() == WANTED


async def test_a_protocol_the_peer_does_not_serve_is_peer_unavailable() -> None:
    async with nodes(2) as (a, b):
        await a.connect(PeerInfo(b.peer_id, b.addrs))
        with pytest.raises(PeerUnavailable, match="does not speak"):
            await _libp2p.open_stream_sending(a.host, b.peer_id, WANTED, b"\x05hello", 10)


async def test_a_handler_removed_while_its_name_is_echoed_fails_only_that_negotiation() -> None:
    """A service unmounting as a stream for it arrives: py-libp2p looked the handler up again
    after echoing the name, and the KeyError took the connection's task group down."""
    multiselect.install()
    ours, theirs = trio.testing.memory_stream_pair()
    listener = Multiselect({WANTED: None})

    class Unmounting(StreamAdapter):
        async def write(self, data: bytes) -> None:
            if data.endswith(encode_delim(WANTED.encode())):
                listener.remove_handler(WANTED)
            await super().write(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(MultiselectClient().select_one_of, [WANTED],
                           MultiselectCommunicator(Recorder(ours)), 5)
        with trio.fail_after(10), pytest.raises(MultiselectError):
            await listener.negotiate(MultiselectCommunicator(Unmounting(theirs)), 5)
        nursery.cancel_scope.cancel()
