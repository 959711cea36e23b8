"""The one place that knows py-libp2p 0.8.1: host construction, stream I/O, error mapping.

Workarounds for py-libp2p pitfalls live here and only here (see docs/design.md):

- `new_libp2p_host`: the default ConnectionConfig auto-dials every known peer (min 50
  connections); meshnat nodes dial only what they are asked to.
- `concrete_addrs`: py-libp2p advertises wildcard listen addresses verbatim (`0.0.0.0`), so
  peers would dial themselves; we expand them to interface addresses.
- `DatagramTap`: the QUIC listener (py-libp2p's, or meshnat's own `quic` transport on qh3,
  `NodeConfig.quic_stack`) owns the node's UDP socket. The tap diverts meshnat datagrams (magic
  prefix) before QUIC sees them, so reflection and punch probes share the QUIC port and
  therefore its NAT mapping.
- `read_frame`: `stream.read()` raises StreamEOF and never returns b""; the length prefix is
  checked before the body is read (`read_varint_prefixed_bytes_limited`).
- `map_peer_errors`: py-libp2p and trio exceptions become meshnat's typed errors.
- `StreamBytes`: a stream as a byte stream for tunnels: EOF as b"", half-close with
  `close_write()`, and Yamux writes that wait for the send window past py-libp2p's 5 s limit.
- `multiselect`: py-libp2p's client negotiates a protocol in two round trips; ours sends the
  header and the proposal at once (`open_stream_sending`: the first message too).
- An exception escaping a stream handler kills py-libp2p's swarm, so every handler meshnat
  registers goes through `guarded_handler`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.crypto.keys import KeyPair, PrivateKey
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from meshnat._libp2p.bytestream import StreamBytes
from meshnat._libp2p.connections import (
    Connection,
    PunchedConnections,
    accepts_streams,
    connection_reports,
    connections_to,
    describe_connection,
    is_circuit_addr,
    is_inbound,
    path_of_stream,
    peer_by_id,
    peer_id_of,
    ping_over,
    stream_count,
    wait_closed,
    wait_direct_connection,
    wait_streams_closed,
    watch_connections,
)
from meshnat._libp2p.host import (
    close_connections,
    concrete_addrs,
    endpoint_of,
    ensure_ports_free,
    interleave_addrs,
    listen_parts,
    load_or_create_key,
    merge_peer_addrs,
    new_libp2p_host,
    parse_multiaddr,
    parse_peer_addr,
    shared_free_port,
    single_exception,
    tcp_first,
)
from meshnat._libp2p.multiselect import negotiation_started, open_stream_sending
from meshnat._libp2p.streams import (
    carried_by,
    close_write,
    connection_remote,
    guarded_handler,
    handling,
    is_relayed,
    map_peer_errors,
    open_stream_on,
    read_frame,
    read_frame_or_end,
    remote_endpoint,
    reset_quietly,
    stream_peer,
    transport_of,
    write_frame,
)
from meshnat._libp2p.taps import Arrival, first_datagram, tapped
from meshnat._libp2p.tcp import dial_tcp_from
from meshnat._libp2p.tcp import install as install_leak_free_tcp_dial
from meshnat._libp2p.udp import (
    DatagramTap,
    close_listener,
    dial_quic_from,
    enable_quic_dial_with_source,
    listen_quic,
    local_port,
)
from meshnat._libp2p.yamux import FRAME_PAYLOAD

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose `trio-stubs` shadow trio's own annotations for
    # mypy; its TaskStatus is the one mypy then knows.
    from trio_typing import TaskStatus
else:
    TaskStatus = trio.TaskStatus

__all__ = [
    "FRAME_PAYLOAD",
    "ID",
    "Arrival",
    "Connection",
    "DatagramTap",
    "IHost",
    "INetConn",
    "INetStream",
    "KeyPair",
    "PeerInfo",
    "PrivateKey",
    "PunchedConnections",
    "StreamBytes",
    "TProtocol",
    "TaskStatus",
    "accepts_streams",
    "carried_by",
    "close_connections",
    "close_listener",
    "close_write",
    "concrete_addrs",
    "connection_remote",
    "connection_reports",
    "connections_to",
    "describe_connection",
    "dial_quic_from",
    "dial_tcp_from",
    "enable_quic_dial_with_source",
    "endpoint_of",
    "ensure_ports_free",
    "first_datagram",
    "guarded_handler",
    "handling",
    "install_leak_free_tcp_dial",
    "interleave_addrs",
    "is_circuit_addr",
    "is_inbound",
    "is_relayed",
    "listen_parts",
    "listen_quic",
    "load_or_create_key",
    "local_port",
    "map_peer_errors",
    "merge_peer_addrs",
    "negotiation_started",
    "new_libp2p_host",
    "open_stream_on",
    "open_stream_sending",
    "parse_multiaddr",
    "parse_peer_addr",
    "path_of_stream",
    "peer_by_id",
    "peer_id_of",
    "ping_over",
    "read_frame",
    "read_frame_or_end",
    "remote_endpoint",
    "reset_quietly",
    "shared_free_port",
    "single_exception",
    "stream_count",
    "stream_peer",
    "tapped",
    "tcp_first",
    "transport_of",
    "wait_closed",
    "wait_direct_connection",
    "wait_streams_closed",
    "watch_connections",
    "write_frame",
]
