"""py-libp2p hosts: identity, construction, addresses, ports, shutdown."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from ipaddress import ip_address
from itertools import zip_longest
from pathlib import Path
from typing import Any, Literal, cast

import multiaddr
import trio
from google.protobuf.message import DecodeError
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.rcmgr import ResourceLimits, new_resource_manager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.transport.quic.config import QUICTransportConfig
from libp2p.transport.tcp.tcp import TCP
from libp2p.utils.address_validation import expand_wildcard_address
from multiaddr.exceptions import Error as MultiaddrError

from meshnat._libp2p import admission, identity, multiselect, quic_stream, tcp, yamux
from meshnat._libp2p.quic import QuicTransport
from meshnat.endpoint import Endpoint
from meshnat.errors import (
    ConfigError,
)

log = logging.getLogger(__name__)

QuicStack = Literal["py-libp2p", "meshnat"]
"""Which QUIC transport a host uses (`new_libp2p_host`)."""

STREAM_IDLE_LIMIT = 24 * 3600.0
"""Seconds a QUIC stream read may wait for data; meshnat's callers apply their own timeouts."""

CONNECTIONS_PER_PEER = 8
"""Established connections a host holds to one peer, both directions together; the next is
refused, none already open is closed (`new_libp2p_host`)."""


# --- identity -------------------------------------------------------------------------------


def load_or_create_key(path: Path | None) -> KeyPair:
    """Load an Ed25519 identity from `path` (libp2p protobuf form), creating it if absent.

    A new key file is written with owner-only permissions. `None` gives an ephemeral identity.
    """
    if path is None:
        return create_new_key_pair()
    if path.exists():
        try:
            private = deserialize_private_key(path.read_bytes())
        except (BaseLibp2pError, DecodeError, ValueError) as exc:
            raise ConfigError(f"key file {path} is not a libp2p private key: {exc}") from exc
        return KeyPair(private, private.get_public_key())
    pair = create_new_key_pair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.private_key.serialize())
    return pair


# --- host -----------------------------------------------------------------------------------


def new_libp2p_host(key_pair: KeyPair, listen: Sequence[multiaddr.Multiaddr], *,
                    max_connections: int, max_connections_per_network: int,
                    quic_stack: QuicStack = "py-libp2p") -> IHost:
    """A py-libp2p host with TCP (Noise only, Yamux) and, for /quic-v1 addresses, QUIC.

    `quic_stack` picks the QUIC transport: py-libp2p's own (aioquic) or meshnat's
    (`quic`: qh3, one socket per listener that dials too, wire-compatible).

    Yamux is meshnat's own (`yamux`: wire-compatible, a reader that never blocks on a
    write, auto-tuned windows); mplex is not offered. QUIC streams deliver every byte or
    fail (`quic_stream`).

    Every remote peer id it accepts is proven by a checked signature (`identity`): Noise is
    the only security protocol offered or accepted, and QUIC certificates are checked here.

    Auto-dialling is off: a meshnat node connects only where it is told to. Pruning starts
    only at `max_connections`: py-libp2p's defaults prune above 300 connections and its
    resource manager refuses more than 256 inbound ones, too few for a relay.

    Connections to one peer are bounded at `CONNECTIONS_PER_PEER` by refusing the next, not
    by closing one: py-libp2p's swarm would close the least used beyond 3 (after a 20 s grace),
    and a connection `connect()` had just returned, with no stream on it yet, went first (two
    mesh nodes hold 4 at times: each one's dial, a dial-back, QUIC and TCP).

    The resource manager also has a system-wide connection counter of its own
    (`ResourceLimits.max_connections`, 1,000 by default) and, once that is reached, "graceful
    degradation" lowers it step by step to half, every 10 s while the node stays full. A relay
    holding 1,000 reservations thus refused or dropped connections around the 1,000th, and
    would then have settled at 500. That counter is set from `max_connections` here, with room
    for the connections still in their handshake (py-libp2p counts each of those twice: once
    before the upgrade, once after), and degradation is off: `max_established_total` is the
    limit a node is configured with, and it stays put. Inbound connections are also bounded
    per source network (`admission.limit_inbound`), and the swarm's handler of each ends with
    its connection (`admission.end_inbound_handlers`).
    """
    quiet = ConnectionConfig(min_connections=0, low_watermark=0,
                             high_watermark=max_connections, max_connections=max_connections,
                             max_connections_per_peer=CONNECTIONS_PER_PEER)
    pending = 64
    limits = ConnectionLimits(
        max_pending_inbound=pending, max_pending_outbound=pending,
        max_established_inbound=max_connections, max_established_outbound=max_connections,
        max_established_per_peer=CONNECTIONS_PER_PEER, max_established_total=max_connections)
    resources = new_resource_manager(
        limits=ResourceLimits(max_connections=max_connections + 2 * pending),
        connection_limits=limits, enable_graceful_degradation=False)
    enable_quic = any("quic-v1" in str(a) for a in listen)
    # A QUIC stream read that waits 30 s (py-libp2p's default) resets the stream and logs an
    # ERROR; streams that may rightly sit idle (tunnels) bound their own waits instead.
    quic = QUICTransportConfig(STREAM_READ_TIMEOUT=STREAM_IDLE_LIMIT)
    identity.install()
    yamux.install()
    multiselect.install()
    quic_stream.install()
    own_quic = enable_quic and quic_stack == "meshnat"
    host = new_host(
        key_pair=key_pair,
        sec_opt=identity.secure_transports(key_pair),
        listen_addrs=list(listen),
        transports=[TCP(), QuicTransport(key_pair, read_timeout=STREAM_IDLE_LIMIT)]
        if own_quic else None,
        enable_quic=enable_quic and not own_quic,
        quic_transport_opt=None if own_quic else quic,
        connection_config=quiet,
        resource_manager=resources,
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): yamux.Yamux},
        # what identify advertises: wildcards expanded, as node.addrs (0.0.0.0 is no address)
        addrs_factory=lambda addrs: [e for a in addrs for e in _expand(a)],
    )

    async def no_auto_dial() -> None:
        """Even at low_watermark=0 the AutoConnector aims for (low+high)/2 connections."""

    cast(Any, host.get_network()).auto_connector.maybe_connect = no_auto_dial
    concrete = {str(a).split("/")[2] for a in listen} - {"0.0.0.0", "::"}
    if len(concrete) == 1:
        tcp.dial_from_listen_ip(host, concrete.pop())
    admission.limit_inbound(host, total=max_connections,
                            per_network=min(max_connections_per_network, max_connections))
    admission.end_inbound_handlers(host)
    return host



async def close_connections(host: IHost, *, timeout: float = 5.0) -> None:
    """Close every connection and listener before the host's services are cancelled.

    Cancelling py-libp2p's swarm service alone leaves QUIC dial sockets open; its own
    `close()` tears them down deterministically.
    """
    with trio.move_on_after(timeout):
        await host.get_network().close()


def ensure_ports_free(ip: str, tcp_port: int, udp_port: int) -> None:
    """Raise ConfigError if a fixed listen port is taken.

    py-libp2p binds its listeners with SO_REUSEPORT, so a second node on a taken port would
    start without error and the kernel would split the traffic between the two. A probe bind
    without SO_REUSEPORT fails on a port already bound (for TCP, SO_REUSEADDR lets it ignore
    TIME_WAIT leftovers of an earlier run while still failing on a listener).
    """
    for kind, port in ((socket.SOCK_STREAM, tcp_port), (socket.SOCK_DGRAM, udp_port)):
        if port == 0:
            continue
        try:
            _probe_bind(ip, kind, port)
        except OSError as exc:
            name = "tcp" if kind == socket.SOCK_STREAM else "udp"
            raise ConfigError(f"{name} port {port} on {ip} is not free: {exc}") from exc


def _probe_bind(ip: str, kind: int, port: int) -> int:
    """Bind (and close) a socket of `kind` on `ip:port`; returns the port bound (OSError if
    taken). An IPv6 probe is IPv6-only, as the listeners are."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((ip, port))
        bound: int = probe.getsockname()[1]
        return bound


def shared_free_port(ips: Sequence[str], kind: int, *, attempts: int = 32) -> int:
    """A port of `kind` (SOCK_STREAM or SOCK_DGRAM) free on every address in `ips` just now,
    so that a dual-stack node listens on one port number in both families (its NAT mapping,
    its punches and its records name one port). ConfigError after `attempts` tries."""
    for _ in range(attempts):
        port = _probe_bind(ips[0], kind, 0)
        try:
            for ip in ips[1:]:
                _probe_bind(ip, kind, port)
        except OSError:
            continue
        return port
    raise ConfigError(f"no port free on all of {list(ips)} after {attempts} tries")


EXPANSION_LIFETIME = 1.0
"""Seconds a wildcard listen address's expansion (the interfaces' addresses) is reused: a
punch asks for the node's endpoints a dozen times, each expansion parsed ~0.3 ms of
multiaddrs."""

_expansions: dict[tuple[bytes, bytes], tuple[float, list[multiaddr.Multiaddr]]] = {}
_EXPANSIONS_KEPT = 256


def concrete_addrs(host: IHost) -> list[multiaddr.Multiaddr]:
    """The host's listen addresses with wildcards expanded, each ending in /p2p/<id>. The
    listeners are read on every call; a wildcard's interface addresses are reused for
    `EXPANSION_LIFETIME` seconds."""
    peer = host.get_id().to_bytes()
    bound = tuple(b.to_bytes() for addr in host.get_network().listeners.values()
                  for b in addr.get_addrs())
    key, now = (peer, b"".join(bound)), time.monotonic()
    cached = _expansions.get(key)
    if cached is not None and now < cached[0]:
        return list(cached[1])
    suffix = multiaddr.Multiaddr(f"/p2p/{host.get_id()}")
    out: list[multiaddr.Multiaddr] = []
    for raw in bound:
        out.extend(a.encapsulate(suffix) for a in _expand(multiaddr.Multiaddr(raw))
                   if a not in out)
    addrs = sorted(set(out), key=str)
    if len(_expansions) >= _EXPANSIONS_KEPT:
        _expansions.pop(next(iter(_expansions)))
    _expansions[key] = (now + EXPANSION_LIFETIME, addrs)
    return list(addrs)


_WILDCARDS = ("/ip4/0.0.0.0/", "/ip6/::/")


def _is_wildcard(addr: multiaddr.Multiaddr) -> bool:
    return str(addr).startswith(_WILDCARDS)


def _expand(bound: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """`bound` once per interface address if it is a wildcard. py-libp2p's
    `expand_wildcard_address` keeps only the IP and the port (a QUIC listener's `/quic-v1`
    is lost, leaving an address nothing can dial): only its IPs are used here."""
    text = str(bound)
    prefix = next((w for w in _WILDCARDS if text.startswith(w)), None)
    if prefix is None:
        return [bound]
    proto = prefix.split("/")[1]
    ips = dict.fromkeys(a.value_for_protocol(proto) for a in expand_wildcard_address(bound))
    return [multiaddr.Multiaddr(f"/{proto}/{ip}/{text[len(prefix):]}") for ip in ips
            if ip and f"/{proto}/{ip}/" not in _WILDCARDS and not _link_local(ip)]


def _link_local(ip: str) -> bool:
    """An IPv6 link-local address (fe80::/10): no peer can dial it from a multiaddr, which
    carries no zone."""
    try:
        parsed = ip_address(ip.split("%", 1)[0])
    except ValueError:
        return True
    return parsed.version == 6 and parsed.is_link_local


def parse_multiaddr(text: str) -> multiaddr.Multiaddr:
    """Parse a multiaddr; raises ConfigError with the reason."""
    try:
        return multiaddr.Multiaddr(text)
    except (MultiaddrError, ValueError) as exc:
        raise ConfigError(f"not a multiaddr: {text!r}: {exc}") from exc


def parse_peer_addr(text: str) -> PeerInfo:
    """Parse a full multiaddr ending in /p2p/<peer id>; raises ConfigError otherwise."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except (MultiaddrError, BaseLibp2pError, ValueError) as exc:
        raise ConfigError(f"not a peer multiaddr (…/p2p/<peer id>): {text!r}") from exc


def merge_peer_addrs(addrs: Sequence[multiaddr.Multiaddr | str]) -> list[PeerInfo]:
    """One PeerInfo per peer id from multiaddrs ending in /p2p/<id>, in first-seen order."""
    merged: dict[ID, PeerInfo] = {}
    for addr in addrs:
        info = parse_peer_addr(str(addr))
        if info.peer_id in merged:
            merged[info.peer_id].addrs.extend(a for a in info.addrs
                                              if a not in merged[info.peer_id].addrs)
        else:
            merged[info.peer_id] = info
    return list(merged.values())


def listen_parts(addr: multiaddr.Multiaddr) -> tuple[str, str, int] | None:
    """(`tcp`|`udp`, ip, port) of an /ip4|ip6/…/tcp|udp/… multiaddr (port may be 0), or None."""
    parts = {proto.name: value for proto, value in addr.items()}
    ip = parts.get("ip4") or parts.get("ip6")
    transport = "tcp" if "tcp" in parts else "udp" if "udp" in parts else None
    if ip is None or transport is None:
        return None
    return transport, str(ip), int(parts[transport])


def interleave_addrs(addrs: Sequence[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """`addrs` with the IP families alternating, starting with the first address's (RFC 8305
    §4; the order within a family is kept, addresses of neither family go last)."""
    by_family: dict[str, list[multiaddr.Multiaddr]] = {"ip4": [], "ip6": []}
    other: list[multiaddr.Multiaddr] = []
    first: str | None = None
    for addr in addrs:
        family = str(addr).split("/", 2)[1]
        if family in by_family:
            first = first or family
            by_family[family].append(addr)
        else:
            other.append(addr)
    lead, follow = ((by_family["ip4"], by_family["ip6"]) if first != "ip6"
                    else (by_family["ip6"], by_family["ip4"]))
    mixed = [a for pair in zip_longest(lead, follow) for a in pair if a is not None]
    return mixed + other


def tcp_first(peer: PeerInfo) -> PeerInfo:
    """The same peer with its TCP addresses first (cheap to try; QUIC may be blocked)."""
    if not peer.addrs:
        raise ConfigError(f"no address known for {peer.peer_id}")
    return PeerInfo(peer.peer_id, sorted(peer.addrs, key=lambda a: "/tcp/" not in str(a)))


def endpoint_of(addr: multiaddr.Multiaddr) -> tuple[str, Endpoint] | None:
    """(`tcp`|`udp`, endpoint) of an /ip4|ip6/…/tcp|udp/… multiaddr with a real port, or None."""
    return _endpoint_of(addr.to_bytes())


@functools.lru_cache(maxsize=4096)
def _endpoint_of(raw: bytes) -> tuple[str, Endpoint] | None:
    """`endpoint_of` by the multiaddr's bytes: a node's own addresses are parsed once."""
    parts = listen_parts(multiaddr.Multiaddr(raw))
    if parts is None or parts[2] == 0:
        return None
    transport, ip, port = parts
    return transport, Endpoint.parse(f"[{ip}]:{port}")


@contextmanager
def single_exception() -> Iterator[None]:
    """Unwrap the ExceptionGroups py-libp2p's nested nurseries build around one real error.

    A group whose leaves (other than trio.Cancelled) are all one exception is replaced by that
    exception; anything else is re-raised as it is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = {id(e): e for e in _leaves(group) if not isinstance(e, trio.Cancelled)}
        if len(leaves) == 1:
            (only,) = leaves.values()
            raise only from only.__cause__
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
