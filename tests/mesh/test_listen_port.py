"""Streams over TCP connections from the listen port: a four-tuple is dialled once.

Discovery and classification ask a peer at once, and the peer asks back, all from the listen
ports: every dial after the first between the same two endpoints failed with EADDRNOTAVAIL
("Cannot assign requested address"), py-libp2p retried it three times and logged each at ERROR.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from meshnat import EchoService, MeshNode, NodeConfig, _libp2p
from meshnat._libp2p import PeerInfo
from meshnat.echo import ECHO_PROTOCOL
from meshnat.errors import PeerUnavailable
from meshnat.listen_port import at_four_tuple


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    """WARNING and worse from meshnat and py-libp2p (whose loggers do not propagate)."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("libp2p", "meshnat")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


async def test_listen_port_streams_at_once_both_ways_share_one_connection() -> None:
    async with (MeshNode(NodeConfig(listen_ip="127.0.0.5")) as a,
                MeshNode(NodeConfig(listen_ip="127.0.0.6")) as b):
        for node in (a, b):
            await node.mount(EchoService())
        opened: list[tuple[MeshNode, MeshNode]] = []

        async def open_from(x: MeshNode, y: MeshNode) -> None:
            stream = await x.open_stream_from_listen_port(y.peer_info(), ECHO_PROTOCOL,
                                                          timeout=15)
            await _libp2p.reset_quietly(stream)
            opened.append((x, y))

        with warnings_logged() as records, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for x, y in ((a, b), (a, b), (b, a), (b, a)):
                    nursery.start_soon(open_from, x, y)
        assert len(opened) == 4
        assert [r.getMessage() for r in records if "TCP" in r.getMessage()] == []
        ends = (a.listen_endpoint("tcp"), b.listen_endpoint("tcp"))
        conn = at_four_tuple(a.host, b.peer_id, *ends)
        assert conn is not None and conn is at_four_tuple(a.host, b.peer_id, *ends)
        assert at_four_tuple(b.host, a.peer_id, *reversed(ends)) is not None


async def test_a_refused_dial_is_the_caller_s_error_and_no_error_record() -> None:
    async with MeshNode(NodeConfig(listen_ip="127.0.0.5")) as a:
        async with MeshNode(NodeConfig(listen_ip="127.0.0.6")) as b:
            gone = PeerInfo(b.peer_id, [x for x in b.peer_info().addrs if "/tcp/" in str(x)])
        with warnings_logged() as records, pytest.raises(PeerUnavailable):
            await a.connect(gone, timeout=10)
        assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
