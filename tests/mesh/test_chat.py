"""ChatService on loopback: lines from members arrive with their path; others are refused."""

from __future__ import annotations

import pytest
import trio

from meshnat._libp2p import ID, map_peer_errors, read_frame, write_frame
from meshnat.chat import CHAT_PROTOCOL, ChatService, Heard
from meshnat.chat.messages import Say
from meshnat.errors import ConfigError, PeerUnavailable
from meshnat.wire import encode, new_txid
from tests.support.fake_reflectors import nodes


async def test_members_lines_arrive_and_strangers_are_refused() -> None:
    async with nodes(3) as (a, b, stranger):
        heard: list[Heard] = []
        arrived = trio.Event()

        def on_heard(h: Heard) -> None:
            heard.append(h)
            if len(heard) == 2:
                arrived.set()

        members: set[ID] = {a.peer_id}
        await b.mount(ChatService(accept=members.__contains__, on_heard=on_heard))
        chat_a = await a.mount(ChatService(accept=lambda p: False, on_heard=heard.append))
        with trio.fail_after(15):
            await a.connect(b.peer_info())
            assert await chat_a.say(b.peer_id, "hello b") == "direct"
            with pytest.raises(ConfigError, match="printable"):
                await chat_a.say(b.peer_id, "\x1b[2J wipe the screen")
            await chat_a.bye(b.peer_id)
            await arrived.wait()
            stream = await stranger.open_stream(b.peer_info(), CHAT_PROTOCOL)
            with pytest.raises(PeerUnavailable), map_peer_errors("stranger"):
                await write_frame(stream, encode(Say(new_txid(), "let me in")))
                await read_frame(stream)  # b resets the stream instead of reading it
        # one stream per line: the two may be handled in either order
        assert sorted((str(h.peer), h.text or "", h.path) for h in heard) == [
            (str(a.peer_id), "", "direct"), (str(a.peer_id), "hello b", "direct")]
