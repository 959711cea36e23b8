"""The control socket: owner-only, bounded, and a bad request costs only that request."""

from __future__ import annotations

import json
import stat
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meshnat import MeshNode
from meshnat.cli.control import control_request, number_arg, serve_control
from meshnat.cli.traversal import traversal_handlers
from meshnat.connect import Connector
from meshnat.errors import ConfigError
from meshnat.relay import RelayClient
from meshnat.traversal import TraversalService
from tests.support.fake_reflectors import LOOPBACK


async def echo_op(request: dict[str, Any]) -> dict[str, object]:
    return {"echo": request.get("value")}


async def test_requests_are_answered_and_bad_ones_do_not_stop_the_server(tmp_path: Path) -> None:
    path = tmp_path / "node.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_control, path, {"echo": echo_op}))
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert await control_request(path, {"op": "echo", "value": 3}, timeout=5) == \
                {"ok": True, "echo": 3}
            unknown = await control_request(path, {"op": "nope"}, timeout=5)
            assert unknown["ok"] is False and unknown["error"] == "ConfigError"
            stream = await trio.open_unix_socket(str(path))  # deeply nested JSON
            await stream.send_all(b"[" * 60_000 + b"\n")
            reply = await stream.receive_some(65536)
            assert b'"ok": false' in reply
            await stream.aclose()
            assert (await control_request(path, {"op": "echo", "value": 4}, timeout=5))["ok"]
            nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_a_socket_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    squatted = tmp_path / "not-a-socket.sock"
    squatted.write_text("")
    with pytest.raises(ConfigError, match="not a socket"):
        await control_request(squatted, {"op": "echo"}, timeout=5)


# --- numbers and any other JSON value in the traversal operations ---------------------------

HOSTILE = [10**400, -(10**400), 2**64, -1, 61, 1e308, "Infinity", "NaN", True, None, "5",
           [], {}, [1] * 1000, "x" * 30_000, 0.5, [[[[[[[[[[0]]]]]]]]]], "12D3KooWfake",
           "/ip4/127.0.0.1/tcp/1", "alive", ""]
FIELDS = {"traversal.pairs": ["wait", "state", "ref"], "traversal.take": ["pair", "deadline",
                                                                          "initiate"],
          "traversal.new": ["peer", "via"], "traversal.stream": ["pair"]}


def test_numbers_are_range_checked_without_converting_huge_integers() -> None:
    assert number_arg(3, "wait", lo=0, hi=60) == 3.0
    for bad in (10**400, -(10**400), float("nan"), float("inf"), True, "3", None, 61, -0.5):
        with pytest.raises(ConfigError) as caught:
            number_arg(bad, "wait", lo=0, hi=60)
        assert len(str(caught.value)) < 120


async def test_no_json_value_in_a_traversal_request_is_an_internal_error(tmp_path: Path) -> None:
    path = tmp_path / "node.sock"
    async with MeshNode(LOOPBACK) as node:
        traversals = await node.mount(TraversalService())
        relay_client = await node.mount(RelayClient())
        connector = await node.mount(Connector(relay_client=relay_client))
        handlers = traversal_handlers(traversals, connector)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_control, path, handlers))
                stream = await trio.open_unix_socket(str(path))  # the measured request
                await stream.send_all(b'{"op": "traversal.pairs", "wait": 1' + b"0" * 400 + b"}\n")
                answer = json.loads(await stream.receive_some(65536))
                await stream.aclose()
                assert answer["ok"] is False and answer["error"] == "ConfigError"
                assert "wait" in answer["message"]
                for op, fields in FIELDS.items():
                    for field in fields:
                        for value in HOSTILE:
                            request = {"op": op, "pair": "1a2b3c4d.1", field: value}
                            answer = await control_request(path, request, timeout=20)
                            assert answer.get("error") != "InternalError", (op, field, value)
                            assert len(answer.get("message", "")) <= 300
                nursery.cancel_scope.cancel()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300)
    | st.floats() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5),
                                                                      children, max_size=4),
    max_leaves=10,
)


@given(json_values)
def test_any_json_value_as_a_number_is_in_range_or_a_config_error(value: object) -> None:
    try:
        got = number_arg(value, "wait", lo=0, hi=60)
    except ConfigError as exc:
        assert len(str(exc)) < 120
    else:
        assert 0 <= got <= 60 and type(value) in (int, float)
