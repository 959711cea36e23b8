"""The control socket: a running `meshnat listen` takes JSON requests from local scripts.

A Unix socket, created owner-only (0600), one request per connection: a JSON object with an
`op` on one line, answered by one JSON line, `{"ok": true, ...}` or `{"ok": false, "error":
<type>, "message": ...}`. Requests are bounded in size and in time; numbers in them are
range-checked by `number_arg` (finite, within the documented range, no bool), so no JSON value
gets an internal error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from meshnat._libp2p import TaskStatus
from meshnat.errors import ConfigError, MeshNatError, PeerTimeout
from meshnat.wire.codec import describe

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, object]]]
MAX_REQUEST = 64 * 1024
MAX_ANSWER = 4 * 1024 * 1024
READ_TIMEOUT = 10.0
MAX_OP_TIME = 120.0
"""No request may run longer (waits in requests are capped below this)."""
MAX_MESSAGE = 300
"""Characters of an error message in an answer (a message may quote a request's value)."""


def number_arg(value: object, name: str, *, lo: float, hi: float, unit: str = "") -> float:
    """A number from a request: an int or a finite float in [lo, hi], else ConfigError.

    JSON integers have no size limit (`10**400` is valid JSON) and `NaN`/`Infinity` parse as
    floats: both are refused here, with a message that does not repeat the value at length.
    """
    ok = False
    if type(value) is int:
        ok = lo <= value <= hi  # exact: a huge int is never converted to a float
    elif type(value) is float:
        ok = math.isfinite(value) and lo <= value <= hi
    if not ok:
        raise ConfigError(f"{name}: expected a number{unit} between {lo:g} and {hi:g}, "
                          f"got {describe(value)}")
    return float(value)  # type: ignore[arg-type]  # an int or float, checked above


def default_control_path() -> Path:
    """`$XDG_RUNTIME_DIR/meshnat.sock`, else `/tmp/meshnat-<uid>.sock`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "meshnat.sock"
    return Path(f"/tmp/meshnat-{os.getuid()}.sock")


async def serve_control(path: Path, handlers: Mapping[str, Handler], *,
                        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer requests on the Unix socket at `path` until cancelled; the file is removed then."""
    file = trio.Path(path)
    if await file.exists():
        _check_owned_socket(path)
        if await _in_use(path):
            raise ConfigError(f"another node already serves the control socket {path}")
        await file.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created owner-only, with no window
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    try:
        await file.chmod(0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(lambda s: _serve_one(s, handlers), [listener])
    finally:
        sock.close()
        with trio.CancelScope(shield=True):
            if await file.exists():
                await file.unlink()


async def _serve_one(stream: trio.abc.Stream, handlers: Mapping[str, Handler]) -> None:
    async with stream:
        op: object = None
        try:
            with trio.fail_after(READ_TIMEOUT):
                request = await _read_json_line(stream, MAX_REQUEST)
            op = request.get("op")
            handler = handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ConfigError(f"unknown op {describe(op)}; known: {sorted(handlers)}")
            with trio.fail_after(MAX_OP_TIME):
                answer: dict[str, object] = {"ok": True, **await handler(request)}
        except (MeshNatError, trio.TooSlowError) as exc:
            answer = {"ok": False, "error": type(exc).__name__,
                      "message": str(exc)[:MAX_MESSAGE]}
        except Exception as exc:  # a bug must cost one request, never the node
            log.exception("control: %s failed", describe(op))
            answer = {"ok": False, "error": "InternalError", "message": str(exc)[:MAX_MESSAGE]}
        log.info("control: %s -> %s", describe(op), "ok" if answer["ok"] else answer["error"])
        try:
            with trio.fail_after(READ_TIMEOUT):
                await stream.send_all(json.dumps(answer).encode() + b"\n")
        except (trio.BrokenResourceError, trio.TooSlowError):
            log.debug("control: the client left before the answer")


async def control_request(path: Path, request: dict[str, object], *,
                          timeout: float) -> dict[str, Any]:
    """Send one request to the node serving `path` and return its answer."""
    try:
        _check_owned_socket(path)
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(json.dumps(request).encode() + b"\n")
                return await _read_json_line(stream, MAX_ANSWER)
    except trio.TooSlowError as exc:
        raise PeerTimeout(f"the node at {path} did not answer within {timeout} s") from exc
    except OSError as exc:
        raise ConfigError(f"no node serves the control socket {path}: {exc}") from exc


async def _read_json_line(stream: trio.abc.Stream, limit: int) -> dict[str, Any]:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ConfigError(f"control message over {limit} bytes")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"control message is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError("control message must be a JSON object")
    return value


def _check_owned_socket(path: Path) -> None:
    """Refuse a control socket file that is not a socket owned by this user (in a shared
    directory such as /tmp another user could have put it there first)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"{path} is not a socket of this user's; refusing to use it")


async def _in_use(path: Path) -> bool:
    try:
        with trio.fail_after(2):
            stream = await trio.open_unix_socket(str(path))
    except (OSError, trio.TooSlowError):
        return False
    await stream.aclose()
    return True
