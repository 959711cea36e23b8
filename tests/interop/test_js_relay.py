"""Conformance: meshnat reserves on, and is reached through, js-libp2p's circuit relay v2 server.

The relay is `js-relay/relay.mjs` (js-libp2p 2.x on Node.js, TCP + Noise + Yamux, identify,
`circuitRelayServer()`), a process of its own on 127.0.0.1. Its npm dependencies are installed
once per session with `npm ci` from the committed package-lock.json (tests/support/jsnode.py).
Without node or npm, or if the install fails, the tests are skipped with the reason, except in CI
(`CI` set), where that is a failure: the interop tests must run there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from meshnat import EchoService
from meshnat._libp2p import PeerInfo, merge_peer_addrs
from meshnat.echo import echo
from meshnat.errors import PeerUnavailable, RelayUnavailable
from meshnat.relay import RelayClient
from tests.support.fake_reflectors import nodes
from tests.support.jsnode import JS_DIR, end, install_problem, process, read_json_line

START_TIMEOUT = 30.0


@dataclass
class JsRelay:
    """A running relay.mjs: its process and its address."""

    proc: subprocess.Popen[str]
    info: PeerInfo
    addrs: list[str]
    """Its full multiaddrs, each ending in /p2p/<peer id>, as it printed them."""

    def stop(self) -> None:
        """Stop it now (as at the end of the test) and wait until it has exited."""
        end(self.proc)


@pytest.fixture(scope="session")
def js_relay_dir() -> Path:
    """The relay's directory with its npm dependencies installed (`npm ci`, once)."""
    problem = install_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the js-libp2p interop tests: {problem}")
        pytest.skip(problem)
    return JS_DIR


@pytest.fixture
def start_js_relay(js_relay_dir: Path) -> Iterator[Callable[..., JsRelay]]:
    """Start relay.mjs (arguments: its options); every relay started is ended after the test."""
    with ExitStack() as stack:

        def start(*options: str) -> JsRelay:
            proc = stack.enter_context(process(["node", str(js_relay_dir / "relay.mjs"),
                                                 *options]))
            ready = read_json_line(proc, "relay.mjs", START_TIMEOUT)
            addrs = ready["addrs"]
            assert isinstance(addrs, list)
            (info,) = merge_peer_addrs([str(a) for a in addrs])
            assert str(info.peer_id) == ready["peer_id"]
            return JsRelay(proc, info, [str(a) for a in addrs])

        yield start


async def test_a_meshnat_node_reserves_on_a_js_relay_and_is_reached_through_it(
        start_js_relay: Callable[..., JsRelay]) -> None:
    relay = start_js_relay()
    async with nodes(2) as (listener, dialer):
        listener_client = await listener.mount(RelayClient())
        dialer_client = await dialer.mount(RelayClient())
        await listener.mount(EchoService())
        with trio.fail_after(20):
            circuit = await listener_client.reserve(relay.info)
            assert str(circuit).endswith(
                f"/p2p/{relay.info.peer_id}/p2p-circuit/p2p/{listener.peer_id}")
            conn = await dialer_client.dial(relay.info, listener.peer_id)
            target = PeerInfo(listener.peer_id, [circuit])
            # a few sizes, within js's default 128 KiB per circuit (both directions together)
            for payload in (b"x", b"through a js-libp2p relay", os.urandom(4096),
                            os.urandom(24 * 1024)):
                assert await echo(dialer, target, payload, connection=conn) == payload
    assert relay.proc.poll() is None, "the js relay must survive meshnat's traffic"


async def test_a_full_js_relay_refuses_a_reservation_with_a_typed_error(
        start_js_relay: Callable[..., JsRelay]) -> None:
    relay = start_js_relay("--max-reservations", "1")
    async with nodes(2) as (first, second):
        one, two = await first.mount(RelayClient()), await second.mount(RelayClient())
        with trio.fail_after(20):
            await one.reserve(relay.info)
            with pytest.raises(RelayUnavailable, match="refused"):
                await two.reserve(relay.info)


async def test_a_circuit_to_a_peer_without_reservation_on_a_js_relay_fails_clearly(
        start_js_relay: Callable[..., JsRelay]) -> None:
    relay = start_js_relay()
    async with nodes(2) as (stranger, dialer):
        await stranger.mount(RelayClient())
        client = await dialer.mount(RelayClient())
        # the relay answers STATUS NO_RESERVATION (204 in the spec's Status enum)
        with trio.fail_after(20), pytest.raises(RelayUnavailable, match="204"):
            await client.dial(relay.info, stranger.peer_id)


async def test_a_js_relay_cutting_a_circuit_at_its_data_limit_is_reported(
        start_js_relay: Callable[..., JsRelay]) -> None:
    relay = start_js_relay("--data-limit", str(32 * 1024))
    async with nodes(2) as (listener, dialer):
        listener_client = await listener.mount(RelayClient())
        dialer_client = await dialer.mount(RelayClient())
        await listener.mount(EchoService())
        with trio.fail_after(30):
            circuit = await listener_client.reserve(relay.info)
            conn = await dialer_client.dial(relay.info, listener.peer_id)
            target = PeerInfo(listener.peer_id, [circuit])
            assert await echo(dialer, target, b"small", connection=conn) == b"small"
            with pytest.raises(PeerUnavailable):
                for _ in range(8):  # 8 x 2 x 16 KiB > 32 KiB: the relay must cut the circuit
                    await echo(dialer, target, bytes(16 * 1024), timeout=5, connection=conn)


async def test_reserving_on_a_js_relay_that_is_gone_fails_with_a_typed_error(
        start_js_relay: Callable[..., JsRelay]) -> None:
    relay = start_js_relay()
    async with nodes(2) as (listener, dialer):
        listener_client = await listener.mount(RelayClient(timeout=5))
        dialer_client = await dialer.mount(RelayClient(timeout=5))
        with trio.fail_after(20):
            await listener_client.reserve(relay.info)
        relay.stop()
        with trio.fail_after(20), pytest.raises(PeerUnavailable):
            await dialer_client.dial(relay.info, listener.peer_id)
        with trio.fail_after(20), pytest.raises(PeerUnavailable):
            await listener_client.reserve(relay.info)


def test_the_cli_listens_and_connects_through_a_js_relay(
        start_js_relay: Callable[..., JsRelay]) -> None:
    relay = start_js_relay()
    cli = [sys.executable, "-m", "meshnat"]
    loopback = ["--relay", relay.addrs[0], "--json"]
    with process([*cli, "listen", *loopback]) as listen:
        ready = read_json_line(listen, "meshnat listen", START_TIMEOUT)
        assert ready["event"] == "ready", ready
        assert isinstance(ready["addrs"], list)
        assert any("/p2p-circuit/" in str(a) for a in ready["addrs"])
        done = subprocess.run([*cli, "connect", str(ready["peer_id"]), "--wait-direct", "0",
                               *loopback], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["echo_ok"] is True
        assert result["path"] == "relayed"
