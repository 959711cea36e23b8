"""The QUIC socket's buffers: forced past net.core.rmem_max/wmem_max where the process may."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from qh3.quic.configuration import QuicConfiguration

from meshnat._libp2p.quic import sockbuf
from meshnat._libp2p.quic.endpoint import QuicEndpoint


def _sysctl(name: str) -> int:
    return int(Path("/proc/sys/net/core", name).read_text())


@pytest.mark.skipif(not Path("/proc/sys/net/core/rmem_max").exists() or os.geteuid() != 0,
                    reason="Linux with CAP_NET_ADMIN (root) only")
def test_endpoint_buffers_forced_past_the_sysctl_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ask for twice what SO_RCVBUF/SO_SNDBUF alone may set; only the FORCE options get it
    # (before, the endpoint set the plain options and the kernel capped them at [rw]mem_max).
    size = 2 * max(_sysctl("rmem_max"), _sysctl("wmem_max"))
    monkeypatch.setattr(sockbuf, "SOCKET_BUFFER", size)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = QuicEndpoint(sock, client=QuicConfiguration(is_client=True), server=None,
                                read_timeout=None)
        assert endpoint.buffers == (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    assert min(endpoint.buffers) == 2 * size  # Linux reports twice the size it granted


def test_without_privilege_the_capped_size_is_reported_and_logged_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # SO_*BUFFORCE refused (no CAP_NET_ADMIN): the plain option's capped size comes back.
    class Unprivileged(socket.socket):
        def setsockopt(self, level: int, option: int, value: int) -> None:  # type: ignore[override]
            if option in (sockbuf.SO_RCVBUFFORCE, sockbuf.SO_SNDBUFFORCE):
                raise PermissionError("no CAP_NET_ADMIN")
            super().setsockopt(level, option, min(value, 65_536))

    monkeypatch.setattr(sockbuf, "_capped_logged", False)
    caplog.set_level("INFO", logger=sockbuf.__name__)
    for _ in range(2):
        with Unprivileged(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            receive, send = sockbuf.enlarge_buffers(sock, 1 << 20)
            assert (receive, send) == (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                                       sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
            assert receive < 1 << 20
    assert len([r for r in caplog.records if "capped" in r.getMessage()]) == 1
