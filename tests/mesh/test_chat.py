"""ChatService on loopback: lines from members arrive with their path; others are refused."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TypeVar

import pytest
import trio

from meshnat._libp2p import ID, PeerInfo, map_peer_errors, read_frame, write_frame
from meshnat.chat import CHAT_PROTOCOL, ChatService, Heard
from meshnat.chat.events import ChatEvent, LineHeard, MemberConnected, MemberLeft
from meshnat.chat.messages import Say
from meshnat.chat.network import ChatNetwork, ChatNetworkConfig
from meshnat.chat.service import ChatConfig
from meshnat.connect import Connector
from meshnat.errors import ConfigError, PeerRefused, PeerTimeout, PeerUnavailable
from meshnat.node import MeshNode
from meshnat.records import AddressRecord, RecordAuthority, RecordConfig
from meshnat.rendezvous import RendezvousClient, RendezvousService
from meshnat.wire import encode, new_txid
from tests.support.fake_reflectors import nodes

E = TypeVar("E", bound=ChatEvent)


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


# --- ChatNetwork: members found by name at a rendezvous point ------------------------------


class Seen:
    """A chat event sink whose events can be waited for."""

    def __init__(self) -> None:
        self.events: list[ChatEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: ChatEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def first(self, kind: type[E]) -> E:
        while True:
            found = [e for e in self.events if isinstance(e, kind)]
            if found:
                return found[0]
            self._changed = trio.Event()
            await self._changed.wait()


class CountingClient(RendezvousClient):
    """Counts the lookups done, so a test can wait for whole lookups."""

    def __init__(self, authority: RecordAuthority) -> None:
        super().__init__(authority)
        self.lookups, self._looked = 0, trio.Event()

    async def discover(self, rendezvous: PeerInfo, namespace: str) -> list[AddressRecord]:
        found = await super().discover(rendezvous, namespace)
        self.lookups += 1
        self._looked.set()
        return found

    async def wait_lookups(self, count: int) -> None:
        while self.lookups < count:
            self._looked = trio.Event()
            await self._looked.wait()


async def _join(node: MeshNode, rendezvous: MeshNode, name: str, seen: Seen,
                network: str = "test-net", *, connector: Connector | None = None,
                chat_config: ChatConfig | None = None) -> tuple[ChatNetwork, CountingClient]:
    authority = await node.mount(RecordAuthority(RecordConfig(name=name, publish_local=True)))
    client = await node.mount(CountingClient(authority))
    config = ChatNetworkConfig(lookup_interval=0.05, dial_grace=20)
    if chat_config is not None:
        config = dataclasses.replace(config, chat=chat_config)
    chat = await node.mount(ChatNetwork(
        network, rendezvous=rendezvous.peer_info(),
        connector=await node.mount(connector or Connector()), client=client, config=config,
        events=seen))
    return chat, client


class SuspectCounter(Connector):
    """A Connector that counts the paths it was asked to suspect."""

    def __init__(self) -> None:
        super().__init__()
        self.suspected = 0

    def suspect(self, peer: ID) -> bool:
        self.suspected += 1
        return super().suspect(peer)


async def test_lines_a_member_refuses_are_failed_without_suspecting_the_path() -> None:
    with trio.fail_after(30):
        async with nodes(3) as (rv, alice, bob):
            await rv.mount(RendezvousService())
            seen_a, seen_b = Seen(), Seen()
            counter = SuspectCounter()
            chat_a, _ = await _join(alice, rv, "alice", seen_a, connector=counter)
            chat_b, _ = await _join(bob, rv, "bob", seen_b,
                                    chat_config=ChatConfig(rate=0.01, burst=1))
            await seen_a.first(MemberConnected)
            await seen_b.first(MemberConnected)
            sent = [await chat_a.say(f"line {n}") for n in range(4)]
            assert [len(s.to) for s in sent] == [1, 0, 0, 0]
            assert all("rate_limited" in f.error for s in sent[1:] for f in s.failed)
            # the member answered: its path works, so it is not checked, nor a circuit made
            assert counter.suspected == 0
            assert len(alice.connections(bob.peer_id)) == 1
            for chat in (chat_a, chat_b):
                await chat.leave()


async def test_members_find_each_other_by_name_talk_and_stay_gone_after_leaving() -> None:
    with trio.fail_after(30):
        async with nodes(4) as (rv, alice, bob, outsider):
            await rv.mount(RendezvousService())
            seen_a, seen_b = Seen(), Seen()
            chat_a, client_a = await _join(alice, rv, "alice", seen_a)
            chat_b, client_b = await _join(bob, rv, "bob", seen_b)
            chat_o, _ = await _join(outsider, rv, "olga", Seen(), network="other-net")
            to_b, to_a = await seen_a.first(MemberConnected), await seen_b.first(MemberConnected)
            assert (to_b.member.name, to_b.path, to_a.member.name, to_a.path) == (
                "bob", "direct", "alice", "direct")
            assert len(alice.connections(bob.peer_id)) == 1  # only the lower peer id dialled
            sent = await chat_a.say("hello bob")
            assert [(d.member.name, d.path) for d in sent.to] == [("bob", "direct")]
            assert sent.failed == ()
            heard = await seen_b.first(LineHeard)
            assert (heard.member.name, heard.text, heard.path) == ("alice", "hello bob", "direct")
            with pytest.raises(ConfigError):
                await chat_a.say("\x07 a bell")
            await chat_b.leave()
            left = await seen_a.first(MemberLeft)
            assert (left.member.name, left.reason) == ("bob", "bye")
            for attempt in range(3):  # the record it left with, listed again
                try:  # leave() cancels a lookup mid-stream, which can break py-libp2p's
                    await client_b.register(rv.peer_info(), "test-net")  # connection
                    break
                except PeerUnavailable:
                    if attempt == 2:
                        raise
            await client_a.wait_lookups(client_a.lookups + 2)  # whole ones that list bob again
            assert list(chat_a.members()) == []
            assert str(outsider.peer_id) not in {e.member.peer for e in seen_a.events}
            for chat in (chat_a, chat_o):  # no lookup may redial while the nodes close
                await chat.leave()


async def test_a_rendezvous_that_does_not_answer_fails_the_mount_with_one_error() -> None:
    async with nodes(2) as (node, not_a_rendezvous):
        with trio.fail_after(20), pytest.raises(PeerUnavailable):
            await _join(node, not_a_rendezvous, "alice", Seen())
        with pytest.raises(ConfigError, match="network name"):
            ChatNetwork("no spaces", rendezvous=not_a_rendezvous.peer_info(),
                        connector=Connector(), client=RendezvousClient(RecordAuthority()))


# --- a line is sent only once the peer has read it ----------------------------------------


def _over(node: MeshNode, transport: str) -> PeerInfo:
    """`node`'s peer info with only its `tcp` or `udp` (QUIC) addresses."""
    info = node.peer_info()
    return PeerInfo(info.peer_id, [x for x in info.addrs if f"/{transport}/" in str(x)])


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_a_line_is_not_reported_sent_until_the_peer_has_read_it(transport: str) -> None:
    """A peer whose chat handler takes the stream and never reads it (a stalled process, or a
    path that carried the negotiation and then died) must not make `say` report the line
    sent: before, the bytes queued in the muxer were taken for a delivery (and over QUIC a
    full close() ends the reading side too, so the peer's end cannot be waited for)."""
    async with nodes(2) as (a, b):
        taken = trio.Event()

        async def stall(stream: object) -> None:
            taken.set()
            await trio.sleep_forever()

        b.host.set_stream_handler(CHAT_PROTOCOL, stall)  # type: ignore[arg-type]
        chat_a = await a.mount(ChatService(accept=lambda p: False, on_heard=lambda h: None,
                                           config=ChatConfig(stream_timeout=1.0)))
        with trio.fail_after(15):
            await a.connect(_over(b, transport))
            assert a.best_connection(b.peer_id).transport == transport
            with pytest.raises(PeerTimeout):
                await chat_a.say(b.peer_id, "hello?")
        assert taken.is_set()  # the stream was negotiated: only the read was missing


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_lines_a_rate_limited_peer_refuses_are_reported_failed_not_sent(
        transport: str) -> None:
    async with nodes(2) as (a, b):
        heard: list[str] = []
        await b.mount(ChatService(accept=lambda p: True,
                                  on_heard=lambda h: heard.append(h.text or ""),
                                  config=ChatConfig(rate=0.01, burst=3)))
        chat_a = await a.mount(ChatService(accept=lambda p: False, on_heard=lambda h: None))
        sent: list[str] = []
        with trio.fail_after(15):
            await a.connect(_over(b, transport))
            for n in range(6):
                with contextlib.suppress(PeerRefused):  # the peer says so: no reset race
                    await chat_a.say(b.peer_id, f"line {n}")
                    sent.append(f"line {n}")
        assert sent == heard == ["line 0", "line 1", "line 2"]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_a_line_sent_again_is_heard_once(transport: str) -> None:
    async with nodes(2) as (a, b):
        heard: list[Heard] = []
        got = trio.Event()

        def on_heard(h: Heard) -> None:
            heard.append(h)
            got.set()

        await b.mount(ChatService(accept=lambda p: True, on_heard=on_heard))
        chat_a = await a.mount(ChatService(accept=lambda p: False, on_heard=lambda h: None))
        with trio.fail_after(15):
            await a.connect(_over(b, transport))
            line = chat_a.line("only once")
            for _ in range(2):  # e.g. its end of stream was lost with the path: sent again
                await chat_a.send_on(a.best_connection(b.peer_id), line)
            await chat_a.say(b.peer_id, "next")
            while len(heard) < 2:
                got = trio.Event()
                await got.wait()
        assert [h.text for h in heard] == ["only once", "next"]
