"""Tunnels through real NATs: an HTTP server bound to 127.0.0.1 behind one NAT, fetched with
an ordinary HTTP client through `meshnat forward` behind another."""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from meshnat._libp2p import ID, load_or_create_key
from tests.lab.test_discovery_lab import start_reflectors
from tests.lab.test_punch_lab import PORT
from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab

HTTP_PORT, FORWARD_PORT = 8000, 8080


def read_until(proc: subprocess.Popen[str], wanted: Callable[[dict], bool],
               timeout: float) -> dict:
    """The first JSON line of `proc` that `wanted` accepts, within `timeout` seconds."""
    assert proc.stdout is not None
    seen = []
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while sel.select(timeout):
            line = proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if wanted(event):
                return event
            seen.append(event)
    raise AssertionError(f"no wanted line in {timeout}s; saw {seen}")


def serve_http(host: Host, root: Path) -> bytes:
    """python -m http.server on the host's 127.0.0.1 only; returns the file's content."""
    content = os.urandom(200_000)
    (root / "blob").write_bytes(content)
    proc = host.popen(host.python("-u", "-m", "http.server", str(HTTP_PORT), "--bind",
                                  "127.0.0.1", "--directory", str(root)))
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:  # it says "Serving HTTP on ..." once bound
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(20) and "Serving HTTP" in proc.stdout.readline()
    return content


def fetch(host: Host) -> str:
    """sha256 of http://127.0.0.1:FORWARD_PORT/blob fetched with urllib on `host`."""
    code = ("import hashlib, urllib.request; print(hashlib.sha256(urllib.request.urlopen("
            f"'http://127.0.0.1:{FORWARD_PORT}/blob', timeout=30).read()).hexdigest())")
    proc = host.run(host.python("-c", code), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def mesh_args(relay: str, reflectors: list[str]) -> list[str]:
    args = ["--relay", relay, "--port", str(PORT), "--json"]
    for addr in reflectors:
        args += ["--reflector", addr]
    return args


def tunnel(lab: Lab, tmp_path: Path, left: Nat, right: Nat
           ) -> tuple[subprocess.Popen[str], subprocess.Popen[str], bytes, Host]:
    """Relay, exposing host (right) and forwarding host (left): (relay, forward, content, left)."""
    relay_host = lab.public_host("relay")
    relay_proc, ready = relay_host.start_json(
        relay_host.python("-m", "meshnat", "relay", "--json"), timeout=30)
    relay = next(a for a in ready["addrs"] if "/tcp/" in a)
    reflectors = [*ready["addrs"], *start_reflectors(lab, count=2)]
    client_key = tmp_path / "forward.key"
    client_id = ID.from_pubkey(load_or_create_key(client_key).public_key)
    server, client = lab.site("right", right).hosts[0], lab.site("left", left).hosts[0]
    (tmp_path / "www").mkdir()
    content = serve_http(server, tmp_path / "www")
    _, exposed = server.start_json(server.python(
        "-m", "meshnat", "expose", "web", "--to", f"127.0.0.1:{HTTP_PORT}",
        "--allow", str(client_id), *mesh_args(relay, reflectors)), timeout=60)
    assert exposed["event"] == "ready" and exposed["service"] == "web"
    assert "/p2p-circuit/" in exposed["addrs"][0]
    forward, ready = client.start_json(client.python(
        "-m", "meshnat", "forward", exposed["peer_id"], "web", "--listen",
        f"127.0.0.1:{FORWARD_PORT}", "--key-file", str(client_key),
        *mesh_args(relay, reflectors)), timeout=60)
    assert ready == {"event": "ready", "listen": f"127.0.0.1:{FORWARD_PORT}",
                     "peer": exposed["peer_id"], "service": "web"}
    return relay_proc, forward, content, client


def test_cone_to_cone_is_fetched_over_a_punched_path_and_outlives_the_relay(
    lab: Lab, tmp_path: Path
) -> None:
    relay, forward, content, client = tunnel(lab, tmp_path, Nat.CONE, Nat.CONE)
    read_until(forward, lambda e: e.get("event") == "path" and e["path"] == "punched", 30)
    assert fetch(client) == hashlib.sha256(content).hexdigest()
    line = read_until(forward, lambda e: e.get("event") == "connection", 30)
    assert (line["path"], line["outcome"], line["bytes_in"] > len(content), line["error"]) == (
        "punched", "closed", True, None), line
    relay.kill()
    relay.wait(timeout=10)
    assert fetch(client) == hashlib.sha256(content).hexdigest()
    line = read_until(forward, lambda e: e.get("event") == "connection", 30)
    assert (line["path"], line["outcome"]) == ("punched", "closed"), line


def test_symmetric_to_symmetric_is_fetched_over_the_relay(lab: Lab, tmp_path: Path) -> None:
    _, forward, content, client = tunnel(lab, tmp_path, Nat.SYMMETRIC, Nat.SYMMETRIC)
    read_until(forward, lambda e: e.get("event") == "path" and e["path"] == "relayed", 30)
    assert fetch(client) == hashlib.sha256(content).hexdigest()
    line = read_until(forward, lambda e: e.get("event") == "connection", 30)
    assert (line["path"], line["outcome"]) == ("relayed", "closed"), line
