"""js-libp2p peers on Node.js: the npm install of tests/interop/js-relay, and their processes.

Used by the interop tests (tests/interop/test_js_relay.py: relay.mjs) and the relay memory
benchmark (benchmarks/bench_relay_memory.py: clients.mjs). Every wait is bounded.
"""

from __future__ import annotations

import json
import selectors
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

JS_DIR = Path(__file__).parents[1] / "interop" / "js-relay"
NPM_CI_TIMEOUT = 300.0
MIN_NODE_MAJOR = 20


def node_problem() -> str | None:
    """Why node/npm cannot run the js peers here, or None if they can."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "js-libp2p interop needs node and npm on PATH (Debian: apt-get install nodejs npm)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        return f"cannot tell node's version from {version!r}"
    if major < MIN_NODE_MAJOR:
        return f"js-libp2p 2.x needs node >= {MIN_NODE_MAJOR}, found {version}"
    return None


def _installed() -> bool:
    """node_modules exists and was installed from the committed package-lock.json."""
    marker = JS_DIR / "node_modules" / ".package-lock.json"
    return marker.exists() and marker.stat().st_mtime >= (JS_DIR / "package-lock.json").stat(
    ).st_mtime


def install_problem() -> str | None:
    """Install the js peers' npm dependencies (`npm ci`, only if not done since the lockfile
    last changed). Returns why they cannot run, or None when they can."""
    problem = node_problem()
    if problem is not None or _installed():
        return problem
    try:
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=JS_DIR, capture_output=True, text=True,
                              timeout=NPM_CI_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return f"npm ci in {JS_DIR} took longer than {NPM_CI_TIMEOUT:.0f}s"
    if done.returncode != 0:
        return f"npm ci in {JS_DIR} failed: {done.stderr.strip()[-2000:]}"
    return None


def read_json_line(proc: subprocess.Popen[str], what: str, timeout: float) -> dict[str, object]:
    """The next line `proc` prints on stdout, as JSON; fails if none comes within `timeout`."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"{what} printed nothing in {timeout}s")
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=5)
        raise RuntimeError(f"{what} exited ({proc.returncode}): {(err or '')[-2000:]}")
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def end(proc: subprocess.Popen[str], *, grace: float = 5.0) -> None:
    """Close its stdin and SIGTERM it (the js peers stop on either), SIGKILL after `grace`."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def process(args: list[str], *, stderr: int | IO[str] = subprocess.PIPE,
            grace: float = 5.0) -> Iterator[subprocess.Popen[str]]:
    """A background process with piped stdin and stdout, ended on exit whatever happened.

    Pass `stderr=subprocess.DEVNULL` for a chatty process nobody reads: a full pipe blocks it.
    """
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                            text=True)
    try:
        yield proc
    finally:
        end(proc, grace=grace)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
