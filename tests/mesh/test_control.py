"""The control socket: owner-only, bounded, and a bad request costs only that request."""

from __future__ import annotations

import stat
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from meshnat.cli.control import control_request, serve_control
from meshnat.errors import ConfigError


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
